"""GGUF file size per --dtype at any GPT-2 shape, without the weights: llama.cpp's own dry run for its mixes.

    python benchmarks/gguf_sizes.py --shape 1558M --vocab ../shared/fixtures/openai-124M-real

For each dtype, an f32 (or streamed-type) GGUF with gpt2hub's metadata and tensor infos is written
with its data section left sparse (no weights: sizes do not depend on values). The streamed types'
size is that file's size, laid out by gguf-py's writer exactly as `gpt2hub convert` lays it out. The
K-quant mixes' size is what `llama_model_quantize(..., dry_run=True)` reports for the f32 file: the
same per-tensor type policy as a real quantization, computed from the shapes only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import tempfile
from pathlib import Path

import numpy as np


def sparse_gguf(path: Path, hparams, vocab_folder: Path, dtype: str) -> int:
    """Write the GGUF header, metadata and tensor infos for `dtype`, the data section as a hole; its size."""
    import gguf

    from gpt2hub import __version__
    from gpt2hub.converters import ConvertInput, expand, matrix_shape
    from gpt2hub.converters import gguf as conv
    from gpt2hub.layout import tensor_shapes
    from gpt2hub.vocabulary import Vocab

    source = ConvertInput(ckpt=None, hparams=hparams, vocab=Vocab.from_folder(vocab_folder), release=path.stem,
                          version=__version__)
    shapes = tensor_shapes(hparams)
    w = gguf.GGUFWriter(None, conv.ARCH)
    conv._add_metadata(w, source, dtype)
    data = 0
    for tf, rule in expand(conv.GLOBAL_RULES, conv.BLOCK_RULES, hparams.n_layer).items():
        shape = matrix_shape(shapes[tf])
        shape = shape[::-1] if rule.transpose else shape
        qtype = gguf.GGMLQuantizationType[conv._ggml_type(rule, dtype, shape[-1])]
        rows = shape if len(shape) > 1 else (1, *shape)
        nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(rows, qtype)))
        w.add_tensor_info(rule.name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        data += nbytes + (-nbytes % w.data_alignment)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    f = w.fout[0]
    start = f.tell() + (-f.tell() % w.data_alignment)
    w.close()
    os.truncate(path, start + data)
    return start + data


def dry_run_size(f32: Path, mix: str) -> int:
    """llama.cpp's quantized size of the f32 file for a mix, from its dry run's log line."""
    import llama_cpp

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix.upper()}")
    params.dry_run = True
    out = f32.with_suffix(f".{mix}.gguf")
    if llama_cpp.llama_model_quantize(os.fsencode(f32), os.fsencode(out), ctypes.byref(params)):
        raise SystemExit(f"dry run of {mix} failed:\n{''.join(log)[-2000:]}")
    text = "".join(log)
    m = re.search(r"quant size\s*=\s*([\d.]+) MiB", text)
    if not m:
        raise SystemExit(f"no 'quant size' in llama.cpp's log for {mix}:\n{text[-2000:]}")
    return int(float(m.group(1)) * (1 << 20))


def main() -> None:
    from gpt2hub.converters import gguf as conv
    from gpt2hub.layout import HParams
    from gpt2hub.testing.release import SHAPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1558M")
    ap.add_argument("--vocab", type=Path, required=True, help="a folder with encoder.json and vocab.bpe")
    a = ap.parse_args()
    h = HParams(n_vocab=50257, **SHAPES[a.shape])
    with tempfile.TemporaryDirectory(prefix="gpt2hub-gguf-sizes-") as tmp:
        print(f"| dtype | size at {a.shape} (MB) | how |")
        print("|---|---|---|")
        for dtype in conv.DTYPES:
            path = Path(tmp) / f"{a.shape}-{dtype}.gguf"
            print(f"| {dtype} | {sparse_gguf(path, h, a.vocab, dtype) / 1e6:.1f} | gpt2hub's layout |", flush=True)
            if dtype != "f32":
                path.unlink()
        f32 = Path(tmp) / f"{a.shape}-f32.gguf"
        for mix in conv.LLAMA_MIXES:
            print(f"| {mix} | ~{dry_run_size(f32, mix) / 1e6:.1f} | llama.cpp dry run (tensor data only) |", flush=True)


if __name__ == "__main__":
    main()
