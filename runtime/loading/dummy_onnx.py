"""Random stand-ins for the front-end ONNX graphs, with the real files' signatures.

The dummy presets have no `speech_tokenizer_v1.onnx` / `campplus.onnx`; these graphs
take the same inputs and give outputs of the same shape and range, so the runtime
exercises its real onnxruntime path:

* vq06: feats [1, 128, T] float32, feats_len [1] int32 -> codes [1, ceil(ceil(T/2)/2)] int64
  (two stride-2 convs like the real tokenizer's 100 Hz -> 25 Hz front, then nearest
  codeword of a random 4096-entry codebook).
* CAM++: fbank [1, T, 80] float32 -> embedding [1, 192] float32 (per-bin RMS over time, affine, tanh).
Built in memory (bytes) from a seed, so nothing is written to disk.
"""
from __future__ import annotations

import numpy as np

OPSET = 17  # ReduceMean still takes `axes` as an attribute here; supported by every ORT >= 1.14


def _init(name: str, array: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def _model_bytes(graph, check: bool = True) -> bytes:
    """Serialized model of `graph`; `check=False` skips onnx's checker (it serializes the whole model once
    more: 5 s for a 500 MB graph, which onnxruntime validates on load anyway)."""
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if check:
        checker.check_model(model)
    return model.SerializeToString()


def vq06_standin(seed: int = 0, channels: int = 32, codebook: int = 4096) -> bytes:
    """A random vq06 tokenizer graph (see module doc) as serialized ONNX bytes."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 128, 3)) / np.sqrt(128 * 3)).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels, 3)) / np.sqrt(channels * 3)).astype(np.float32)
    cb = rng.standard_normal((channels, codebook)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["feats", "w1"], ["c1"], kernel_shape=[3], strides=[2], pads=[1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], kernel_shape=[3], strides=[2], pads=[1, 1]),
        helper.make_node("Transpose", ["c2"], ["h"], perm=[0, 2, 1]),       # [1, T', C]
        helper.make_node("MatMul", ["h", "codebook"], ["scores"]),          # [1, T', K]
        helper.make_node("ArgMax", ["scores"], ["codes"], axis=2, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "vq06_standin",
        inputs=[helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
                helper.make_tensor_value_info("feats_len", TensorProto.INT32, [1])],
        outputs=[helper.make_tensor_value_info("codes", TensorProto.INT64, [1, "T4"])],
        initializer=[_init("w1", w1), _init("w2", w2), _init("codebook", cb)],
    )
    return _model_bytes(graph)


def campplus_standin(seed: int = 0, dim: int = 192) -> bytes:
    """A random speaker-encoder graph (see module doc) as serialized ONNX bytes."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed + 1)
    w = (rng.standard_normal((80, dim)) / np.sqrt(80)).astype(np.float32)
    b = (0.1 * rng.standard_normal(dim)).astype(np.float32)
    nodes = [
        # The fbank is mean-normalised per bin, so its time-mean is ~0: use the per-bin RMS.
        helper.make_node("Mul", ["fbank", "fbank"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["m"], axes=[1], keepdims=0),  # [1, 80]
        helper.make_node("Sqrt", ["m"], ["rms"]),
        helper.make_node("MatMul", ["rms", "w"], ["p"]),
        helper.make_node("Add", ["p", "b"], ["q"]),
        helper.make_node("Tanh", ["q"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "campplus_standin",
        inputs=[helper.make_tensor_value_info("fbank", TensorProto.FLOAT, [1, "T", 80])],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])],
        initializer=[_init("w", w), _init("b", b)],
    )
    return _model_bytes(graph)
