"""ONNX with a KV cache: the GPT-2 decoder graph optimum exports (`text-generation-with-past`), for onnxruntime.

Folder: model.onnx (the graph; weights as external data) + model.onnx_data + config.json and the
tokenizer files of the HF layout. Inputs and outputs are named and shaped as optimum's GPT-2 export
(`TextDecoderWithPositionIdsOnnxConfig` with past): input_ids, attention_mask, position_ids (int64) and
past_key_values.{i}.key/value (batch, n_head, past_sequence_length, head_dim); logits and
present.{i}.key/value. The first step feeds a past of length 0.

The graph is built node by node with onnx.helper (no torch, no TF) at opset 17 (LayerNormalization).
Weights keep the checkpoint's Conv1D (in, out) layout, which is exactly what MatMul(x, W) needs, and
are streamed into model.onnx_data (each tensor 4096-aligned, as onnx's own external-data writer does),
so memory stays bounded and 774M/1558M pass protobuf's 2 GB limit. f16 stores the weights as float16
and casts them to float32 in the graph: onnxruntime's CPU kernels compute in float32, and the cache and
logits stay float32. verify reads the weights back exactly (`read_stored`): each initializer's dims, element
type and byte range in model.onnx_data from the graph parsed without its external data, nothing loaded.
"""

from __future__ import annotations

import math
from pathlib import Path

from typing import TYPE_CHECKING

from gpt2hub import lazy
from gpt2hub.casts import CASTS
from gpt2hub.errors import ConversionError
from gpt2hub.layout import GELU_EXACT, GELU_TANH, HParams
from gpt2hub.stored import ITEM_BYTES, Expected, Stored, StoredOutput
from gpt2hub.threads import pipelined

from . import ConvertInput, Format, Planned, Progress, Weights, expand, plan, row_chunks
from . import hf

if TYPE_CHECKING:
    from gpt2hub.vocabulary import Vocab

np = lazy.module("numpy")  # loaded when a tensor is touched, not when the registry is read

GRAPH, DATA = "model.onnx", "model.onnx_data"
OPSET = 17  # LayerNormalization
ALIGN = 4096
DTYPES = {"f32": "FLOAT", "f16": "FLOAT16"}  # onnx.TensorProto element type of the stored weights
ENCODINGS = {"FLOAT": "F32", "FLOAT16": "F16", "BFLOAT16": "BF16"}  # TensorProto element types as gguf-py names them
MASKED = -1e9  # added to the scores of keys a query may not see (finite: a fully padded row stays NaN-free)
# optimum's dynamic axis names
BATCH, SEQ, PAST, TOTAL = "batch_size", "sequence_length", "past_sequence_length", "past_sequence_length + sequence_length"


class _Graph:
    """Nodes and constants being added to one graph; names are made unique by a counter."""

    def __init__(self):
        self.nodes, self.constants, self._n = [], [], 0

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        self._n += 1
        out = f"/{op_type}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n_out: int, **attrs) -> list[str]:
        from onnx import helper

        self._n += 1
        outs = [f"/{op_type}_{self._n}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs

    def named(self, op_type: str, inputs: list[str], out: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value, dtype=None) -> str:
        """A constant initializer (int64 unless dtype says otherwise)."""
        from onnx import numpy_helper

        self._n += 1
        name = f"/const_{self._n}"
        self.constants.append(numpy_helper.from_array(np.array(value, dtype=dtype or np.int64), name))
        return name


def _weights(source: ConvertInput, dtype: str) -> tuple[list[Planned], dict[str, str]]:
    """The tensors to store (HF names, Conv1D layout), and the graph name of each as float32."""
    planned = plan(source, hf.GLOBAL_RULES, hf.BLOCK_RULES, hf.HEAD)
    return planned, {p.name: p.name if dtype == "f32" else f"{p.name}/f32" for p in planned}


def build_graph(source: ConvertInput, dtype: str, offsets: dict[str, tuple[int, int]]):
    """The decoder graph; `offsets` gives each weight's (offset, length) in model.onnx_data."""
    from onnx import TensorProto, helper

    h = source.hparams
    C, nh, hd = h.n_embd, h.n_head, h.head_dim
    planned, w = _weights(source, dtype)
    g = _Graph()
    initializers = []
    for p in planned:
        init = TensorProto(name=p.name, data_type=getattr(TensorProto, DTYPES[dtype]), dims=list(p.shape),
                           data_location=TensorProto.EXTERNAL)
        for key, value in (("location", DATA), ("offset", str(offsets[p.name][0])), ("length", str(offsets[p.name][1]))):
            init.external_data.add(key=key, value=value)
        initializers.append(init)
        if dtype != "f32":
            g.named("Cast", [p.name], w[p.name], to=TensorProto.FLOAT)

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [BATCH, SEQ]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, TOTAL]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, [BATCH, SEQ])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, SEQ, h.n_vocab])]
    for i in range(h.n_layer):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, [BATCH, nh, PAST, hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT, [BATCH, nh, TOTAL, hd]))

    # Attention bias (batch, 1, T, S): 0 where query t (absolute position S - T + t) may see key s, else MASKED.
    T = g.op("Gather", g.op("Shape", "input_ids"), g.const(1))
    S = g.op("Gather", g.op("Shape", "attention_mask"), g.const(1))
    rows = g.op("Unsqueeze", g.op("Add", g.op("Range", g.const(0), T, g.const(1)), g.op("Sub", S, T)), g.const([1]))
    cols = g.op("Unsqueeze", g.op("Range", g.const(0), S, g.const(1)), g.const([0]))
    causal = g.op("LessOrEqual", cols, rows)  # (T, S)
    padding = g.op("Cast", g.op("Unsqueeze", "attention_mask", g.const([1, 2])), to=TensorProto.BOOL)  # (B, 1, 1, S)
    bias = g.op("Where", g.op("And", causal, padding), g.const(0.0, np.float32), g.const(MASKED, np.float32))

    def layer_norm(x: str, prefix: str) -> str:
        return g.op("LayerNormalization", x, w[f"{prefix}.weight"], w[f"{prefix}.bias"], axis=-1, epsilon=h.eps)

    def gelu(a: str) -> str:
        if h.activation == GELU_EXACT:  # 0.5 a (1 + erf(a / sqrt(2))), torch's and HF's "gelu"
            erf = g.op("Erf", g.op("Mul", a, g.const(1 / math.sqrt(2), np.float32)))
            return g.op("Mul", g.op("Mul", a, g.const(0.5, np.float32)), g.op("Add", erf, g.const(1.0, np.float32)))
        # tanh GELU, as openai/gpt-2: 0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))
        inner = g.op("Mul", g.op("Add", a, g.op("Mul", g.op("Pow", a, g.const(3.0, np.float32)),
                                                g.const(0.044715, np.float32))), g.const(math.sqrt(2 / math.pi), np.float32))
        return g.op("Mul", g.op("Mul", a, g.const(0.5, np.float32)), g.op("Add", g.op("Tanh", inner), g.const(1.0, np.float32)))

    def linear(x: str, prefix: str) -> str:  # Conv1D: x @ W(in, out) + b
        return g.op("Add", g.op("MatMul", x, w[f"{prefix}.weight"]), w[f"{prefix}.bias"])

    def heads(x: str) -> str:  # (B, T, C) -> (B, nh, T, hd)
        return g.op("Transpose", g.op("Reshape", x, g.const([0, 0, nh, hd])), perm=[0, 2, 1, 3])

    x = g.op("Add", g.op("Gather", w["wte.weight"], "input_ids"), g.op("Gather", w["wpe.weight"], "position_ids"))
    for i in range(h.n_layer):
        p = f"h.{i}"
        q, k, v = g.ops("Split", [linear(layer_norm(x, f"{p}.ln_1"), f"{p}.attn.c_attn"), g.const([C, C, C])], 3, axis=2)
        k = g.named("Concat", [f"past_key_values.{i}.key", heads(k)], f"present.{i}.key", axis=2)  # (B, nh, S, hd)
        v = g.named("Concat", [f"past_key_values.{i}.value", heads(v)], f"present.{i}.value", axis=2)
        scale = 1 / math.sqrt(hd) / (i + 1 if h.attn_scale_by_layer else 1)  # HF scale_attn_by_inverse_layer_idx
        scores = g.op("Mul", g.op("MatMul", heads(q), g.op("Transpose", k, perm=[0, 1, 3, 2])),
                      g.const(scale, np.float32))  # (B, nh, T, S)
        y = g.op("MatMul", g.op("Softmax", g.op("Add", scores, bias), axis=-1), v)  # (B, nh, T, hd)
        y = g.op("Reshape", g.op("Transpose", y, perm=[0, 2, 1, 3]), g.const([0, 0, C]))  # (B, T, C)
        x = g.op("Add", x, linear(y, f"{p}.attn.c_proj"))
        a = linear(layer_norm(x, f"{p}.ln_2"), f"{p}.mlp.c_fc")  # (B, T, n_ff)
        x = g.op("Add", x, linear(gelu(a), f"{p}.mlp.c_proj"))
    x = layer_norm(x, "ln_f")
    # The head, wte (tied) or lm_head (V, C): Gemm with transB reads it as it is stored, not a transposed copy.
    head = w["wte.weight" if h.tied else hf.HEAD.name]
    flat = g.op("Gemm", g.op("Reshape", x, g.const([-1, C])), head, transB=1)  # (B*T, V)
    shape = g.op("Concat", g.op("Shape", "input_ids"), g.const([h.n_vocab]), axis=0)
    g.named("Reshape", [flat, shape], "logits")

    graph = helper.make_graph(g.nodes, "gpt2", inputs, outputs, initializer=initializers + g.constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="gpt2hub", producer_version=source.version)
    model.ir_version = 8  # onnxruntime 1.14+ reads it
    helper.set_model_props(model, {"source_release": source.release})
    return model


def write(source: ConvertInput, out: Path, dtype: str, progress: Progress) -> None:
    import onnx

    planned, _ = _weights(source, dtype)
    size, cast = CASTS[dtype]
    offsets: dict[str, tuple[int, int]] = {}
    with open(out / DATA, "wb") as f:
        for p in planned:
            f.write(bytes(-f.tell() % ALIGN))
            start = f.tell()
            for data, n in pipelined(lambda b: (cast(b), b.nbytes), row_chunks(source, p)):
                f.write(memoryview(data).cast("B"))
                progress(n)
            offsets[p.name] = (start, f.tell() - start)
    onnx.save_model(build_graph(source, dtype, offsets), out / GRAPH)
    hf.write_side_files(source, out, dtype)


# --- reading a folder back ------------------------------------------------------------------------

def is_output(path: Path) -> bool:
    return (path / GRAPH).is_file() and (path / "config.json").is_file()


def _graph(folder: Path):
    """model.onnx parsed without its external data (the weights stay on disk)."""
    import onnx

    try:
        return onnx.load(str(folder / GRAPH), load_external_data=False)
    except Exception as e:  # protobuf and onnx raise many types for a damaged file
        raise ConversionError(f"{folder / GRAPH}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def stored_tensors(folder: Path, graph, names: set[str]) -> list[Stored]:
    """The initializers named in `names`: encoding, shape and byte range in their external data file (none read)."""
    from onnx import TensorProto

    root = folder.resolve()
    tensors = []
    for t in graph.graph.initializer:
        if t.name not in names:
            continue
        if t.data_location != TensorProto.EXTERNAL:
            raise ConversionError(f"{folder / GRAPH}: {t.name} is stored inside the graph, not as external data "
                                  f"(gpt2hub writes every weight to {DATA})")
        info = {e.key: e.value for e in t.external_data}
        path = (folder / info.get("location", "")).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ConversionError(f"{folder / GRAPH}: {t.name}'s external data {info.get('location')!r} is not a file "
                                  "in the folder")
        element = TensorProto.DataType.Name(t.data_type)
        encoding = ENCODINGS.get(element, element)
        shape = tuple(int(d) for d in t.dims)
        size = math.prod(shape) * ITEM_BYTES[encoding] if encoding in ITEM_BYTES else 0
        tensors.append(Stored(t.name, encoding, shape, path, int(info.get("offset", 0)), int(info.get("length", size))))
    return tensors


def read_weights(folder: Path) -> Weights:
    """config.json and the graph's stored weights (named as gpt2hub's reference, Conv1D layout), memory-mapped
    from the external data file."""
    config = hf.read_config(folder)
    tensors = {}
    names = set(hf.reference_names(config["n_layer"], config["tied"] is not False).values())
    for s in stored_tensors(folder, _graph(folder), names):
        if s.encoding not in ("F32", "F16"):
            raise ConversionError(f"{folder / GRAPH}: {s.name} is {s.encoding}, not float32 or float16")
        if s.nbytes != math.prod(s.shape) * ITEM_BYTES[s.encoding] or s.offset + s.nbytes > s.path.stat().st_size:
            raise ConversionError(f"{s.path}: {s.name} ({s.nbytes:,} bytes at {s.offset:,}) does not fit its shape or the file")
        tensors[s.name] = np.memmap(s.path, f"<f{ITEM_BYTES[s.encoding]}", "r", s.offset, s.shape)  # F32 or F16
    return Weights(config, tensors)


def read_stored(folder: Path, hparams: HParams, vocab: Vocab) -> StoredOutput:
    """Every weight's byte range in model.onnx_data and what it must be: the source tensor in config.json's dtype,
    in the checkpoint's Conv1D layout (what MatMul(x, W) needs); eps as the graph's LayerNormalization nodes."""
    graph = _graph(folder)
    dtype = hf.read_dtype(folder)
    encoding = hf.ENCODINGS.get(dtype, dtype)
    expected = {rule.name: Expected(tf, encoding, rule.transpose) for tf, rule in
                expand(hf.GLOBAL_RULES, hf.BLOCK_RULES, hparams.n_layer, None if hparams.tied else hf.HEAD).items()}
    tensors = {s.name: s for s in stored_tensors(folder, graph, set(expected))}
    config, problems = hf.read_config(folder), []
    eps = {a.f for n in graph.graph.node if n.op_type == "LayerNormalization" for a in n.attribute if a.name == "epsilon"}
    if len(eps) == 1:
        config["eps"] = eps.pop()  # what onnxruntime computes with, not what config.json says
    else:
        problems.append(f"{GRAPH}: LayerNormalization epsilons {sorted(eps)}, GPT-2 has one")
    # what onnxruntime computes with: the graph's GELU (Erf: the exact form), not what config.json says
    config["activation"] = GELU_EXACT if any(n.op_type == "Erf" for n in graph.graph.node) else GELU_TANH
    problems += hf.tokenizer_problems(folder, vocab)
    return StoredOutput(dtype, config, tensors, expected, problems)


FORMAT = Format(name="onnx", rank=50, dtypes=tuple(DTYPES), default_dtype="f32", write=write,
                **{**hf.FOLDER_FIELDS, "consumer": "onnxruntime", "read_stored": read_stored, "is_output": is_output, "read_weights": read_weights,
                   "looks_like": "an ONNX model folder", "side_files": hf.write_side_files, "proof_reads": ("model.onnx",)},
                requires="onnx", extra="onnx", demo_dtypes=("f32",), hub_prefix="onnx/", tags=("onnx",))
