"""llm.c checkpoint files written as karpathy/llm.c's train_gpt2.py writes them (`write_model`, `write_tensors`,
`pad_vocab`, `write_tokenizer`, commit f1e2ace), from a release in OpenAI's layout, for the tests of the llm.c source.

Written from llm.c's code, not from gpt2hub's tables: the release's variables become train_gpt2.py's GPT
parameters as its `GPT.from_pretrained` loads them (Conv1D weights transposed into nn.Linear (out, in)), then go
through the same torch calls train_gpt2.py makes (`.to(torch.float32)` / `.to(torch.bfloat16)` viewed as int16,
`F.pad` of wte to a multiple of 128, a torch.int32 header), in its order. The tokenizer file comes from a
tiktoken Encoding of the release's encoder.json + vocab.bpe (`enc.decode_bytes([i])`, as train_gpt2.py's `enc`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..tfcheckpoint import Checkpoint
from .release import tiktoken_encoding

# train_gpt2.py GPT.from_pretrained: OpenAI's checkpoints use Conv1D, train_gpt2.py's GPT nn.Linear
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
VERSION = {"float32": 3, "bfloat16": 5}  # write_model: 3 all fp32, 5 all bf16, both with the vocabulary padded


def gpt_parameters(release: Path) -> tuple[dict[str, int], dict]:
    """(GPTConfig's fields, train_gpt2.py GPT's named_parameters as torch tensors) holding the release's weights.
    The tied lm_head is the same parameter as wte, so named_parameters lists it once."""
    import torch

    suffix = {"g": "weight", "b": "bias", "w": "weight"}
    params = {}
    with Checkpoint(release) as ckpt:
        for tf, shape in ckpt.shapes().items():
            parts = tf.split("/")[1:]  # model/h3/attn/c_attn/w -> h3, attn, c_attn, w
            if parts[0][0] == "h" and parts[0][1:].isdigit():
                parts[0] = f"h.{parts[0][1:]}"
            name = "transformer." + (f"{parts[0]}.weight" if len(parts) == 1 else ".".join(parts[:-1]) + "."
                                     + suffix[parts[-1]])
            value = torch.from_numpy(ckpt.tensor(tf).copy())
            value = value[0] if value.ndim == 3 else value  # Conv1D [1, in, out] is HF's (in, out)
            params[name] = value.t().contiguous() if name.endswith(TRANSPOSED) else value
    wte, wpe = params["transformer.wte.weight"], params["transformer.wpe.weight"]
    n_layer = sum(1 for n in params if n.endswith(".ln_1.weight"))
    n_head = json.loads((release / "hparams.json").read_text())["n_head"]
    config = dict(block_size=wpe.shape[0], vocab_size=wte.shape[0], n_layer=n_layer, n_head=n_head, n_embd=wte.shape[1])
    return config, params


def write_fp32(tensor, file) -> None:
    import torch

    file.write(tensor.detach().cpu().to(torch.float32).numpy().tobytes())


def write_bf16(tensor, file) -> None:
    import torch

    t = tensor.detach().cpu().to(torch.bfloat16)
    file.write(t.view(torch.int16).numpy().tobytes())  # numpy has no bf16: reinterpret as int16


def write_tensors(params: dict, n_layer: int, file, dtype: str) -> None:
    """train_gpt2.py's order: wte, wpe, then each kind for every layer, then ln_f."""
    write = write_fp32 if dtype == "float32" else write_bf16
    write(params["transformer.wte.weight"], file)  # (V, C)
    write(params["transformer.wpe.weight"], file)  # (T, C)
    for kind in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"):
        for i in range(n_layer):
            write(params[f"transformer.h.{i}.{kind}"], file)
    write(params["transformer.ln_f.weight"], file)  # (C,)
    write(params["transformer.ln_f.bias"], file)  # (C,)


def pad_vocab(tensor, multiple: int = 128, value: float = 0):
    """wte's rows padded with `value` up to a multiple of 128 (50257 -> 50304)."""
    import torch.nn.functional as F

    V, C = tensor.shape
    Vp = ((V + multiple - 1) // multiple) * multiple
    return tensor if Vp == V else F.pad(tensor, (0, 0, 0, Vp - V), value=value)


def write_model(config: dict[str, int], params: dict, filename: Path, dtype: str) -> None:
    import torch

    header = torch.zeros(256, dtype=torch.int32)
    header[0] = 20240326  # magic
    header[1] = VERSION[dtype]
    header[2] = config["block_size"]
    header[3] = config["vocab_size"]
    header[4] = config["n_layer"]
    header[5] = config["n_head"]
    header[6] = config["n_embd"]
    params = dict(params)
    params["transformer.wte.weight"] = pad_vocab(params["transformer.wte.weight"])
    header[7] = params["transformer.wte.weight"].size(0)  # padded vocab size
    with open(filename, "wb") as file:
        file.write(header.numpy().tobytes())
        write_tensors(params, config["n_layer"], file, dtype)


def write_tokenizer(enc, filename: Path) -> None:
    import torch

    n = enc.max_token_value + 1
    header = torch.zeros(256, dtype=torch.int32)
    header[0] = 20240328  # magic
    header[1] = 2  # tokenizer version 2: includes the EOT token
    header[2] = n
    header[3] = enc.eot_token
    with open(filename, "wb") as file:
        file.write(header.numpy().tobytes())
        for i in range(n):
            b = enc.decode_bytes([i])
            assert len(b) < 256, f"Token length exceeds 255: {len(b)}"
            file.write(struct.pack("<B", len(b)))
            file.write(b)


def write_llmc(release: Path, folder: Path, dtype: str = "float32", tokenizer: bool = True,
               name: str = "124M") -> Path:
    """train_gpt2.py's files for the release in `folder`: gpt2_{name}.bin (float32) or gpt2_{name}_bf16.bin, and
    gpt2_tokenizer.bin unless `tokenizer` is False. Returns the model file."""
    folder.mkdir(parents=True, exist_ok=True)
    config, params = gpt_parameters(Path(release))
    model = folder / (f"gpt2_{name}.bin" if dtype == "float32" else f"gpt2_{name}_bf16.bin")
    write_model(config, params, model, dtype)
    if tokenizer:
        write_tokenizer(tiktoken_encoding(release), folder / "gpt2_tokenizer.bin")
    return model
