"""The integer-kernel rewrite and the mask drop change the graph, not its numbers."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from contract.cpu_features import cpu_flags, has_int8_dot
from modelbuild.integer_ops import fuse_integer_ops
from modelbuild.optimize import infer_shapes
from modelbuild.outlier_split import drop_masks, split_outliers

HIDDEN, HEADS, BATCH, SEQ = 128, 4, 2, 5  # enough channels for a 99th percentile


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _layer() -> onnx.ModelProto:
    """x -> LayerNorm -> Q, K, V -> MultiHeadAttention -> dense + bias -> FastGelu -> MatMul."""
    rng = np.random.default_rng(0)
    scale = HIDDEN**-0.5
    weights = {name: (scale * rng.normal(size=(HIDDEN, HIDDEN))).astype(np.float32) for name in "qkvof"}
    constants = [numpy_helper.from_array(w, f"w_{name}") for name, w in weights.items()]
    dense_bias = rng.normal(size=HIDDEN).astype(np.float32)
    dense_bias[3] = 40.0  # one GELU channel far above the rest, as in MiniLM's early FFN2 inputs
    constants += [
        numpy_helper.from_array(np.ones(HIDDEN, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=3 * HIDDEN).astype(np.float32), "qkv_bias"),
        numpy_helper.from_array(dense_bias, "o_bias"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
        *(helper.make_node("MatMul", ["ln", f"w_{p}"], [p], name=p) for p in "qkv"),
        helper.make_node(
            "MultiHeadAttention",
            ["q", "k", "v", "qkv_bias", "lengths"],
            ["attn"],
            domain="com.microsoft",
            num_heads=HEADS,
            name="mha",
        ),
        helper.make_node("MatMul", ["attn", "w_o"], ["o"], name="dense"),
        helper.make_node("Add", ["o", "o_bias"], ["ob"]),
        helper.make_node("FastGelu", ["ob"], ["g"], domain="com.microsoft"),
        helper.make_node("MatMul", ["g", "w_f"], ["y"], name="ffn2"),
    ]
    graph = helper.make_graph(
        nodes,
        "layer",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, SEQ, HIDDEN]),
            helper.make_tensor_value_info("lengths", TensorProto.INT32, [BATCH]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, SEQ, HIDDEN])],
        constants,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _feeds(seed: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(BATCH, SEQ, HIDDEN)).astype(np.float32)
    return {"x": x, "lengths": np.array([SEQ, SEQ - 2], dtype=np.int32)}


def _quantized(model: onnx.ModelProto, tmp_path: Path) -> onnx.ModelProto:
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(infer_shapes(model), str(src))
    quantize_static(
        str(src),
        str(dst),
        _Reader([_feeds(seed) for seed in range(4)]),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"], "WeightSymmetric": True},
    )
    return onnx.load(str(dst))


def _run(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], _feeds(seed=99))
    return np.asarray(y)


@pytest.mark.skipif(
    not has_int8_dot(cpu_flags()),
    reason="builds use integer kernels only for VNNI hosts; without VNNI, ORT's u8 x s8 kernels saturate",
)
def test_integer_kernels_compute_what_the_qdq_graph_does(tmp_path: Path) -> None:
    quantized = _quantized(_layer(), tmp_path)
    fused = onnx.ModelProto()
    fused.CopyFrom(quantized)
    counts = fuse_integer_ops(fused)
    ops = Counter(node.op_type for node in fused.graph.node)
    assert counts == {"QAttention": 1, "MatMulIntegerToFloat": 2}
    assert ops["MultiHeadAttention"] == ops["MatMul"] == 0 and ops["Add"] == 0  # bias went into the kernel
    np.testing.assert_allclose(_run(fused), _run(quantized), rtol=1e-5, atol=1e-5)


def test_dropping_the_outlier_mask_after_quantising_is_exact(tmp_path: Path) -> None:
    split, splits = split_outliers(_layer(), [_feeds(seed) for seed in range(4)], ratio=1.5)
    assert splits, "the test layer should have an outlier channel on the FFN2 input"
    quantized = _quantized(split, tmp_path)
    unmasked = onnx.ModelProto()
    unmasked.CopyFrom(quantized)
    assert drop_masks(unmasked) == len(splits)
    assert not [node for node in unmasked.graph.node if node.op_type == "Mul"]
    np.testing.assert_array_equal(_run(unmasked), _run(quantized))
