"""Outlier channels split off a MatMul leave the product unchanged."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelbuild.outlier_split import outlier_channels, split_outliers


def test_only_channels_far_above_the_rest_are_outliers() -> None:
    amax = np.full(200, 2.0)
    amax[7], amax[42], amax[99] = 23.6, 14.4, 3.0
    assert outlier_channels(amax, ratio=2.0) == [7, 42]
    assert outlier_channels(np.full(200, 2.0), ratio=2.0) == []


def _gelu_matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    """x -> FastGelu -> MatMul(W): the shape of an FFN down-projection."""
    k, n = weight.shape
    nodes = [
        helper.make_node("FastGelu", ["x"], ["h"], domain="com.microsoft", name="gelu"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="ffn2"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"x": x})
    return np.asarray(y)


def test_split_product_equals_the_original() -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 8)).astype(np.float32)
    x = rng.normal(size=(2, 5, 64)).astype(np.float32)
    x[:, 0, 3] = 40.0  # one [CLS]-like token with a huge channel
    model = _gelu_matmul_model(weight)
    split, splits = split_outliers(model, [{"x": x}], ratio=2.0)
    assert [(s.matmul, s.channels) for s in splits] == [("ffn2_outliers", (3,))]
    np.testing.assert_allclose(_run(split, x), _run(model, x), rtol=1e-5, atol=1e-4)


def test_skipped_matmuls_are_left_alone() -> None:
    x = np.ones((1, 2, 16), dtype=np.float32)
    x[0, 0, 1] = 50.0
    model = _gelu_matmul_model(np.ones((16, 4), dtype=np.float32))
    split, splits = split_outliers(model, [{"x": x}], ratio=2.0, skip=["ffn2"])
    assert splits == [] and len(split.graph.node) == len(model.graph.node)
