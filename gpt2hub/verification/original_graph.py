"""The original checkpoint's consumer: TensorFlow running OpenAI's own graph from model.ckpt.meta where it may
run (its published sha256, or every op pure tensor math), else a transcription of openai/gpt-2's model.py.

Like every consumer it holds no state between calls, so each call can run in a child process of its own.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import settings
from ..errors import CheckpointError, VerificationError, one_line, read_capped
from ..layout import GELU_EXACT, HParams
from ..trust import HashStatus

META = "model.ckpt.meta"
MAX_META_BYTES = 64 << 20  # a meta graph holds no weights: OpenAI's are 0.47 MB (124M) and 0.93 MB (355M)
# The ops TensorFlow may run from a meta graph whose sha256 OpenAI did not publish: the tensor math of OpenAI's
# own graph (124M's model.ckpt.meta) and of the same forward built by today's TensorFlow (AddV2, BatchMatMulV2,
# GatherV2, Softmax, Fill, PlaceholderWithDefault). None reads or writes anything outside the process.
TENSOR_MATH = frozenset({
    "Add", "AddV2", "BatchMatMul", "BatchMatMulV2", "Cast", "ConcatV2", "Const", "Exp", "ExpandDims", "Fill",
    "GatherV2", "GreaterEqual", "Identity", "MatMul", "Max", "Mean", "Mul", "NoOp", "OneHot", "Pack", "Placeholder",
    "PlaceholderWithDefault", "Pow", "Prod", "Range", "RealDiv", "Reshape", "Rsqrt", "Softmax",
    "SparseSoftmaxCrossEntropyWithLogits", "Split", "Square", "StridedSlice", "Sub", "Sum", "Tanh", "Tile", "Transpose",
})
# Stateful ops for restoring the variables, and only that: the logits may depend on no Assign or RestoreV2, and a
# RestoreV2 reads only the checkpoint verify feeds the Saver's filename tensor.
RESTORING = frozenset({"VariableV2", "Assign", "RestoreV2"})
# In OpenAI's graph but never run by verify: the Saver's save path (writes files) and the variables' initializers
# (random_normal in OpenAI's; tf.compat.v1's other default initializers draw uniform or truncated normals).
NEVER_RUN = frozenset({"SaveV2", "RandomStandardNormal", "RandomUniform", "TruncatedNormal"})
ALLOWED = "every op pure tensor math"


def published_meta_sha256() -> frozenset[str]:
    """The sha256 of every model.ckpt.meta OpenAI published, from the manifests shipped with gpt2hub."""
    from .. import registry

    return frozenset(f.sha256 for m in registry._builtin_manifests() for f in m.files  # shipped only: the root of trust
                     if f.name == META and f.status == HashStatus.PUBLISHED and f.sha256)


def unsafe_op(meta) -> str | None:
    """Why a MetaGraphDef may not run (an op of the graph, or of a function in its library, off the allowlist)."""
    from tensorflow.python.framework import op_def_registry

    # A call of a library function is checked through the function's body; never a function posing as an op.
    functions = {f.signature.name for f in meta.graph_def.library.function if op_def_registry.get(f.signature.name) is None}
    nodes = [(n, RESTORING | NEVER_RUN) for n in meta.graph_def.node]
    nodes += [(n, frozenset()) for f in meta.graph_def.library.function for n in f.node_def]
    for node, also in nodes:
        if node.op not in TENSOR_MATH and node.op not in functions and node.op not in also:
            return f"op {node.op} ({node.name[:80]}) is not pure tensor math"
    return None


def unsafe_dependency(graph, logits, saver) -> str | None:
    """Why what verify runs of an imported graph (the logits, the Saver's restore op) may not run: it depends on an
    op that must never run, the logits on restoring, or a RestoreV2 reads another file than the one verify feeds."""
    try:
        restore = graph.get_operation_by_name(saver.saver_def.restore_op_name)
        filename = graph.get_tensor_by_name(saver.saver_def.filename_tensor_name).op
    except (KeyError, ValueError):
        return "its Saver names a restore op or filename tensor the graph lacks"
    for target, banned in ((logits.op, NEVER_RUN | {"Assign", "RestoreV2"}), (restore, NEVER_RUN)):
        seen, stack = {target}, [target]
        while stack:
            op = stack.pop()
            if op.type in banned:
                return f"{target.name} depends on {op.type} ({op.name[:80]})"
            for parent in [t.op for t in op.inputs] + list(op.control_inputs):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
    for op in graph.get_operations():
        if op.type == "RestoreV2" and op.inputs[0].op is not filename:
            return f"{op.name[:80]} restores from {op.inputs[0].name[:80]}, not the checkpoint verify names"
    return None


def read_meta_graph(original: Path) -> tuple[object | None, str]:
    """(the MetaGraphDef in model.ckpt.meta, why it may run) or (None, why it is not run): OpenAI's published sha256,
    or every op on the allowlist. Parsed with TensorFlow's protobuf classes: nothing imported into TF or run."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import meta_graph_pb2

    try:
        data = read_capped(original / META, CheckpointError, MAX_META_BYTES)
    except CheckpointError as e:
        return None, str(e).replace(str(original / META), META)
    meta = meta_graph_pb2.MetaGraphDef()
    try:
        meta.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        return None, f"{META} is not a MetaGraphDef ({one_line(e)})"
    if hashlib.sha256(data).hexdigest() in published_meta_sha256():
        return meta, "its sha256 is OpenAI's published one"
    why = unsafe_op(meta)
    if why:
        return None, f"{META} not run: its sha256 is not one OpenAI published and {why}"
    return meta, ALLOWED


def _import_tensorflow():
    """Import TensorFlow with its C++ start-up lines (absl, oneDNN banners) kept off the terminal."""
    settings.set_default("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf


def openai_model(tf, hp: HParams, X, var: Callable[[str], object], dtype) -> object:
    """openai/gpt-2 src/model.py's forward, op for op, on today's TensorFlow: logits (B*T, n_vocab) for ids X.
    `var(name)` gives a variable ("h0/attn/c_attn/w", ...) in `dtype`. hp's variant fields are followed (eps, the
    erf GELU, n_inner, an untied head "lm_head", layer i's scores divided by i + 1), as transformers computes them."""

    def shape_list(x):
        static, dynamic = x.shape.as_list(), tf.shape(x)
        return [dynamic[i] if s is None else s for i, s in enumerate(static)]

    def norm(x, scope, epsilon=hp.eps):
        g, b = var(scope + "/g"), var(scope + "/b")
        u = tf.reduce_mean(x, axis=-1, keepdims=True)
        s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
        return (x - u) * tf.math.rsqrt(s + epsilon) * g + b

    def split_states(x, n):
        *start, m = shape_list(x)
        return tf.reshape(x, start + [n, m // n])

    def merge_states(x):
        *start, a, b = shape_list(x)
        return tf.reshape(x, start + [a * b])

    def conv1d(x, scope, nf):
        *start, nx = shape_list(x)
        w, b = var(scope + "/w"), var(scope + "/b")
        return tf.reshape(tf.matmul(tf.reshape(x, [-1, nx]), tf.reshape(w, [-1, nf])) + b, start + [nf])

    def attention_mask(nd, ns):
        i = tf.range(nd)[:, None]
        j = tf.range(ns)
        return tf.cast(i >= j - ns + nd, dtype)

    def attn(x, scope, n_state, past, layer):
        def split_heads(x):
            return tf.transpose(split_states(x, hp.n_head), [0, 2, 1, 3])

        def mask_attn_weights(w):
            _, _, nd, ns = shape_list(w)
            b = tf.reshape(attention_mask(nd, ns), [1, 1, nd, ns])
            return w * b - tf.cast(1e10, dtype) * (1 - b)

        def multihead_attn(q, k, v):
            w = tf.matmul(q, k, transpose_b=True)
            w = w * tf.math.rsqrt(tf.cast(shape_list(v)[-1], dtype))
            if hp.attn_scale_by_layer:  # HF's scale_attn_by_inverse_layer_idx
                w = w / tf.cast(layer + 1, dtype)
            w = tf.nn.softmax(mask_attn_weights(w), axis=-1)
            return tf.matmul(w, v)

        c = conv1d(x, scope + "/c_attn", n_state * 3)
        q, k, v = map(split_heads, tf.split(c, 3, axis=2))
        present = tf.stack([k, v], axis=1)
        if past is not None:
            pk, pv = tf.unstack(past, axis=1)
            k, v = tf.concat([pk, k], axis=-2), tf.concat([pv, v], axis=-2)
        a = merge_states(tf.transpose(multihead_attn(q, k, v), [0, 2, 1, 3]))
        return conv1d(a, scope + "/c_proj", n_state), present

    def gelu(x):
        if hp.activation == GELU_EXACT:
            return 0.5 * x * (1 + tf.math.erf(x / np.sqrt(2)))
        return 0.5 * x * (1 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))

    def mlp(x, scope, n_state):
        return conv1d(gelu(conv1d(x, scope + "/c_fc", n_state)), scope + "/c_proj", shape_list(x)[-1])

    def block(x, scope, past, layer):
        a, present = attn(norm(x, scope + "/ln_1"), scope + "/attn", x.shape[-1], past, layer)
        x = x + a
        x = x + mlp(norm(x, scope + "/ln_2"), scope + "/mlp", hp.n_ff)
        return x, present

    batch, sequence = shape_list(X)
    wte, wpe = var("wte"), var("wpe")
    h = tf.gather(wte, X) + tf.gather(wpe, tf.range(sequence)[None, :])
    for layer in range(hp.n_layer):
        h, _ = block(h, f"h{layer}", None, layer)
    h = norm(h, "ln_f")
    head = wte if hp.tied else var("lm_head")
    return tf.matmul(tf.reshape(h, [batch * sequence, hp.n_embd]), head, transpose_b=True)  # (B*T, n_vocab)


def graph_logits_tensor(graph, n_vocab: int):
    """(input placeholder, logits tensor) of a meta graph that holds the model's forward, else None.

    OpenAI's 124M graph: Placeholder int32 [1, 1024] -> model/MatMul_2:0 [1024, n_vocab]; generally the
    last float op under model/ whose output ends in n_vocab, fed by the one int32 placeholder."""
    inputs = [op.outputs[0] for op in graph.get_operations() if op.type == "Placeholder" and op.outputs[0].dtype.name == "int32"]
    logits = [op.outputs[0] for op in graph.get_operations()
              if op.name.startswith("model/") and op.type in ("MatMul", "BatchMatMulV2", "Reshape") and op.outputs
              and op.outputs[0].dtype.name == "float32" and op.outputs[0].shape.rank in (2, 3)
              and op.outputs[0].shape[-1] == n_vocab]
    return (inputs[0], logits[-1]) if len(inputs) == 1 and logits else None


def tensorflow_logits(original: Path, tokens: Sequence[int]) -> tuple[np.ndarray, str, str]:
    """TensorFlow's logits: OpenAI's own graph from model.ckpt.meta restored from the checkpoint (float32) when
    the meta graph holds the forward and may run (read_meta_graph, unsafe_dependency); else the transcription above
    on the variables TensorFlow reads (float64). Returns (logits (T, n_vocab), dtype, what ran)."""
    tf = _import_tensorflow()
    hp = HParams.from_file(original / "hparams.json")
    prefix = str(original / "model.ckpt")
    v1 = tf.compat.v1
    graph = tf.Graph()
    meta, basis = read_meta_graph(original)
    if hp.variant():  # OpenAI's graph computes GPT-2 itself, not this model
        meta, basis = None, f"hparams.json sets {', '.join(hp.variant())}: OpenAI's graph does not compute them"
    why, found = basis, None
    with graph.as_default():
        if meta is not None:
            why = f"{META} has no forward"
            try:
                saver = v1.train.import_meta_graph(meta, clear_devices=True)
                found = graph_logits_tensor(graph, hp.n_vocab) if saver is not None else None
                unsafe = unsafe_dependency(graph, found[1], saver) if found and basis == ALLOWED else None
            except Exception:  # a meta graph TensorFlow cannot import: fall back to the transcription
                found, unsafe = None, None
            if unsafe:
                found, why = None, f"{META} not run: its sha256 is not one OpenAI published and {unsafe}"
        if found is not None:
            X, logits = found
            n = X.shape[1] if X.shape.rank == 2 and X.shape[1] is not None else len(tokens)
            if len(tokens) > n:
                raise VerificationError(f"the original graph takes {n} tokens at most")
            feed = np.zeros((1, n), np.int32)  # causal: padding after the input does not change its logits
            feed[0, : len(tokens)] = tokens
            with v1.Session(graph=graph) as sess:
                try:
                    saver.restore(sess, prefix)
                except tf.errors.OpError as e:
                    raise CheckpointError(f"TensorFlow cannot restore {prefix}: {e.message.splitlines()[0]}") from None
                out = sess.run(logits, {X: feed})
            out = out.reshape(-1, hp.n_vocab)[: len(tokens)]
            return out, "f32", f"OpenAI's graph from model.ckpt.meta ({X.name} -> {logits.name}; {basis})"
    return tf_transcription(original, tokens), "f64", f"a transcription of openai/gpt-2 src/model.py ({why})"


def tf_transcription(original: Path, tokens: Sequence[int], dtype: str = "float64") -> np.ndarray:
    """openai_model() eagerly on the variables TensorFlow reads from the checkpoint, cast to `dtype` one at a time."""
    tf = _import_tensorflow()
    hp = HParams.from_file(original / "hparams.json")
    prefix = str(original / "model.ckpt")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except tf.errors.OpError as e:
        raise CheckpointError(f"TensorFlow cannot open {prefix}: {e.message.splitlines()[0]}") from None

    def var(name: str):  # cast one variable at its use, so only float32 copies stay resident
        try:
            return tf.cast(reader.get_tensor("model/" + name), dtype)
        except tf.errors.OpError as e:
            raise CheckpointError(f"TensorFlow cannot read model/{name}: {e.message.splitlines()[0]}") from None

    X = tf.constant([list(tokens)], dtype=tf.int32)
    return openai_model(tf, hp, X, var, getattr(tf, dtype)).numpy().astype(np.float64)
