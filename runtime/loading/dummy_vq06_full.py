"""A vq06 stand-in with the real tokenizer's shapes and cost, for `dummy:full`.

`dummy_onnx.vq06_standin` (two small convs and a codebook) keeps `dummy:tiny` fast, but under
`dummy:full` it would make a cold voice's front end look ~100x cheaper than with the real
`speech_tokenizer_v1.onnx` (523 MB). This graph follows the architecture spec §3.3 reads from the
real file: conv 128->1280 k3 s2 + GELU, conv 1280->1280 k3 s2 + GELU (100 Hz -> 25 Hz), a learned
(1500, 1280) position table, 6 pre-LN blocks (20 heads x 64, q and k each scaled by 64^-1/4, keys
without bias, MLP 1280->5120->1280, GELU(erf), LayerNorm eps 1e-5), L2 normalisation, nearest of
4,096 codewords. ~131 M random parameters (N(0, 1/fan_in)): the same signature, output length and
onnxruntime work per second of audio as the real graph, not its codes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .dummy_onnx import _init, _model_bytes

WIDTH, HEADS, BLOCKS, MLP, CODEBOOK, POSITIONS, MELS = 1280, 20, 6, 5120, 4096, 1500, 128
STANDIN_VERSION = 1  # bump when the graph changes: cached files carry it in their name


class _Graph:
    """Nodes and initializers of one ONNX graph, with fresh names for intermediate values."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits, self._n = rng, [], [], 0

    def name(self) -> str:
        self._n += 1
        return f"t{self._n}"

    def weight(self, *shape: int, fan_in: int, scale: float = 1.0) -> str:
        name = self.name()
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale / np.sqrt(fan_in))
        self.inits.append(_init(name, values))
        return name

    def const(self, value, dtype=np.float32) -> str:
        name = self.name()
        self.inits.append(_init(name, np.asarray(value, dtype=dtype)))
        return name

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        out = self.name()
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def gelu(self, x: str) -> str:  # 0.5 x (1 + erf(x / sqrt 2)); opset 17 has no Gelu op
        erf = self.op("Erf", self.op("Div", x, self.const(np.sqrt(2.0))))
        return self.op("Mul", self.op("Mul", x, self.const(0.5)), self.op("Add", erf, self.const(1.0)))

    def layer_norm(self, x: str) -> str:
        return self.op("LayerNormalization", x, self.const(np.ones(WIDTH)), self.const(np.zeros(WIDTH)),
                       axis=-1, epsilon=1e-5)

    def linear(self, x: str, n_in: int, n_out: int, bias: bool = True) -> str:
        y = self.op("MatMul", x, self.weight(n_in, n_out, fan_in=n_in))
        return self.op("Add", y, self.weight(n_out, fan_in=n_in, scale=0.1)) if bias else y


def vq06_full_standin(seed: int = 0) -> bytes:
    """The graph as serialized ONNX bytes: feats [1, 128, T] float32, feats_len [1] int32 ->
    codes [1, ceil(ceil(T/2)/2)] int64 (T/4 frames up to 1500: 30 s, like the real graph)."""
    from onnx import TensorProto, helper

    g = _Graph(np.random.default_rng(seed + 7))
    x = g.gelu(g.op("Conv", "feats", g.weight(WIDTH, MELS, 3, fan_in=MELS * 3), g.weight(WIDTH, fan_in=1, scale=0.01),
                    kernel_shape=[3], strides=[2], pads=[1, 1]))
    x = g.gelu(g.op("Conv", x, g.weight(WIDTH, WIDTH, 3, fan_in=WIDTH * 3), g.weight(WIDTH, fan_in=1, scale=0.01),
                    kernel_shape=[3], strides=[2], pads=[1, 1]))
    h = g.op("Transpose", x, perm=[0, 2, 1])  # [1, T', 1280]
    frames = g.op("Slice", g.op("Shape", h), g.const([1], np.int64), g.const([2], np.int64))  # [T']
    positions = g.op("Slice", g.weight(POSITIONS, WIDTH, fan_in=1, scale=0.02), g.const([0], np.int64), frames,
                     g.const([0], np.int64))
    h = g.op("Add", h, positions)
    for _ in range(BLOCKS):
        h = g.op("Add", h, _attention(g, g.layer_norm(h)))
        h = g.op("Add", h, g.linear(g.gelu(g.linear(g.layer_norm(h), WIDTH, MLP)), MLP, WIDTH))
    norm = g.op("ReduceL2", h, axes=[2], keepdims=1)
    unit = g.op("Div", h, g.op("Max", norm, g.const(1e-12)))
    codes = g.op("ArgMax", g.op("MatMul", unit, g.weight(WIDTH, CODEBOOK, fan_in=1)), axis=2, keepdims=0)
    g.nodes.append(helper.make_node("Identity", [codes], ["codes"]))
    graph = helper.make_graph(
        g.nodes, "vq06_full_standin",
        inputs=[helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, MELS, "T"]),
                helper.make_tensor_value_info("feats_len", TensorProto.INT32, [1])],
        outputs=[helper.make_tensor_value_info("codes", TensorProto.INT64, [1, "T4"])],
        initializer=g.inits,
    )
    return _model_bytes(graph, check=False)


def _attention(g: _Graph, x: str) -> str:
    """Self-attention of x [1, T', 1280]: 20 heads of 64, q and k each scaled by 64^-1/4."""
    head = WIDTH // HEADS
    scale = g.const(head ** -0.25)
    split = g.const([1, -1, HEADS, head], np.int64)

    def heads(t: str, perm: list[int]) -> str:
        return g.op("Transpose", g.op("Mul", g.op("Reshape", t, split), scale), perm=perm)

    q = heads(g.linear(x, WIDTH, WIDTH), [0, 2, 1, 3])               # [1, H, T', 64]
    k = heads(g.linear(x, WIDTH, WIDTH, bias=False), [0, 2, 3, 1])   # [1, H, 64, T']
    v = g.op("Transpose", g.op("Reshape", g.linear(x, WIDTH, WIDTH), split), perm=[0, 2, 1, 3])
    attn = g.op("Softmax", g.op("MatMul", q, k), axis=-1)           # [1, H, T', T']
    out = g.op("Transpose", g.op("MatMul", attn, v), perm=[0, 2, 1, 3])
    return g.linear(g.op("Reshape", out, g.const([1, -1, WIDTH], np.int64)), WIDTH, WIDTH)


def vq06_full_standin_file(seed: int = 0) -> Path | bytes:
    """`vq06_full_standin(seed)` written once to the cache directory ($EDITX_CACHE, else
    ~/.cache/editx) and reused: building the 520 MB graph takes ~6 s, and every `dummy:full` load
    (each GPU benchmark step) would pay it again. Falls back to the bytes when nothing can be written."""
    directory = Path(os.environ.get("EDITX_CACHE") or Path.home() / ".cache" / "editx")
    path = directory / f"vq06_full_standin_v{STANDIN_VERSION}_seed{seed}.onnx"
    if path.is_file():
        return path
    model = vq06_full_standin(seed)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_bytes(model)
        partial.replace(path)  # atomic: a concurrent loader sees the whole file or none
    except OSError:
        return model
    return path
