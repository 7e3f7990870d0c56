"""SmoothQuant on the ONNX graph: move LayerNorm-output outliers from activations into weights.

LayerNorm outputs of MiniLM carry a few channels ~30x larger than the rest; a per-tensor uint8
scale then wastes most of its levels. For each LayerNorm output X feeding MatMuls with constant
weights W, s_j = amax(X_j)^alpha / amax(W_j)^(1-alpha); the graph computes (X / s) @ (diag(s) W),
which is the same product with flatter activations. Activation ranges are measured over real
tokens only (unpadded single-sentence feeds).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from modelbuild.calibration import Feeds

DEFAULT_ALPHA = 0.75
MIN_SCALE = 1e-5
DEFAULT_SOURCE_OPS = ("LayerNormalization",)
SMOOTH_SUFFIX = "_smooth"

Array = npt.NDArray[np.float32]


@dataclass
class SmoothTarget:
    """One LayerNorm output and the MatMuls (with initializer weights) that read it."""

    tensor: str
    matmuls: list[onnx.NodeProto]


def find_targets(model: onnx.ModelProto, source_ops: tuple[str, ...]) -> list[SmoothTarget]:
    """MatMuls with initializer weights whose input comes straight from one of `source_ops`."""
    initializers = {init.name for init in model.graph.initializer}
    produced_by_ln = {out for n in model.graph.node if n.op_type in source_ops for out in n.output[:1]}
    targets: dict[str, SmoothTarget] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] in produced_by_ln and node.input[1] in initializers:
            targets.setdefault(node.input[0], SmoothTarget(node.input[0], [])).matmuls.append(node)
    return list(targets.values())


def activation_amax(model: onnx.ModelProto, tensors: list[str], feeds: Iterable[Feeds]) -> dict[str, Array]:
    """Per-channel max |x| of each tensor over every token of the calibration feeds."""
    if not tensors:  # session.run([]) would return every graph output instead
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {out.name for out in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    amax: dict[str, Array] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed), strict=True):
            channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            amax[name] = np.maximum(amax.get(name, channel_max), channel_max)
    return amax


def smooth(
    model: onnx.ModelProto,
    feeds: Iterable[Feeds],
    alpha: float = DEFAULT_ALPHA,
    source_ops: tuple[str, ...] = DEFAULT_SOURCE_OPS,
) -> onnx.ModelProto:
    """Return a smoothed copy of the model: a Mul(1/s) before each target, weights scaled by s."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    targets = find_targets(smoothed, source_ops)
    amax = activation_amax(smoothed, [t.tensor for t in targets], feeds)
    weights = {init.name: init for init in smoothed.graph.initializer}
    for target in targets:
        mats = [numpy_helper.to_array(weights[m.input[1]]) for m in target.matmuls]
        w_amax = np.max([np.abs(w).max(axis=1) for w in mats], axis=0)
        scale = np.power(np.maximum(amax[target.tensor], MIN_SCALE), alpha)
        scale = np.maximum(scale / np.power(np.maximum(w_amax, MIN_SCALE), 1.0 - alpha), MIN_SCALE)
        _insert_mul(smoothed, target, (1.0 / scale).astype(np.float32))
        for node, w in zip(target.matmuls, mats, strict=True):
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1])
            )
    return smoothed


def _insert_mul(model: onnx.ModelProto, target: SmoothTarget, inv_scale: Array) -> None:
    scaled = target.tensor + SMOOTH_SUFFIX
    scale_name = scaled + "_inv_scale"
    model.graph.initializer.append(numpy_helper.from_array(inv_scale, scale_name))
    mul = onnx.helper.make_node("Mul", [target.tensor, scale_name], [scaled], name=scaled + "_Mul")
    position = min(list(model.graph.node).index(m) for m in target.matmuls)
    model.graph.node.insert(position, mul)
    for node in target.matmuls:
        node.input[0] = scaled
