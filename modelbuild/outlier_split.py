"""Split the few outlier input channels of a MatMul off into a small fp32 MatMul.

The GELU output feeding each FFN down-projection has one or two channels 3-5x larger than every
other (23.6 vs <= 5.7 in layer 0 of MiniLM, on [CLS]/[SEP]). A per-tensor uint8 scale sized for
them wastes most of its levels on the rest; SmoothQuant only moves the problem into that weight
row, whose per-output-column scale it then dominates. Here, instead (as LLM.int8() does per
token), X @ W = (X * mask) @ W_rest + X[:, O] @ W[O, :]: the big product stays int8 with the
outliers masked out of its range, and a K=|O| fp32 product carries them exactly.

The mask matters only while calibrating: once quantised, the outlier rows of W_rest hold their
zero point (quantisers keep 0.0 exact), so whatever QuantizeLinear makes of an unmasked outlier,
its product is zero. `drop_masks` then removes the Muls; the graph computes the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from modelbuild.calibration import Feeds
from modelbuild.roles import consumer_map
from modelbuild.smoothquant import activation_amax, find_targets

DEFAULT_SOURCE_OPS = ("FastGelu",)
REFERENCE_PERCENTILE = 99.0
SIDE_SUFFIX = "_outliers"
MASK_NODE_SUFFIX = "_Mask"


@dataclass(frozen=True)
class Split:
    matmul: str
    channels: tuple[int, ...]


def outlier_channels(amax: np.ndarray, ratio: float) -> list[int]:
    """Channels whose max |x| exceeds `ratio` times the 99th percentile of all channels' maxima."""
    threshold = ratio * float(np.percentile(amax, REFERENCE_PERCENTILE))
    return [int(i) for i in np.flatnonzero(amax > threshold)]


def split_outliers(
    model: onnx.ModelProto,
    feeds: Iterable[Feeds],
    ratio: float,
    skip: Iterable[str] = (),
    source_ops: tuple[str, ...] = DEFAULT_SOURCE_OPS,
) -> tuple[onnx.ModelProto, list[Split]]:
    """A copy of the model with outlier channels split off; the splits name the fp32 side MatMuls."""
    split_model = onnx.ModelProto()
    split_model.CopyFrom(model)
    skipped = set(skip)
    targets = [t for t in find_targets(split_model, source_ops) if t.matmuls[0].name not in skipped]
    amax = activation_amax(split_model, [t.tensor for t in targets], feeds)
    splits = []
    for target in targets:
        channels = outlier_channels(amax[target.tensor], ratio)
        if not channels:
            continue
        for node in target.matmuls:
            splits.append(Split(_split(split_model, node, channels), tuple(channels)))
    return split_model, splits


def _split(model: onnx.ModelProto, node: onnx.NodeProto, channels: list[int]) -> str:
    """Rewrite `node` in place into masked main product + fp32 side product; return the side's name."""
    weights = {init.name: init for init in model.graph.initializer}
    w = numpy_helper.to_array(weights[node.input[1]])
    base = node.name + SIDE_SUFFIX
    mask = np.ones(w.shape[0], dtype=np.float32)
    mask[channels] = 0.0
    w_rest = w.copy()
    w_rest[channels, :] = 0.0
    weights[node.input[1]].CopyFrom(numpy_helper.from_array(w_rest.astype(np.float32), node.input[1]))
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(mask, base + "_mask"),
            numpy_helper.from_array(np.asarray(channels, dtype=np.int64), base + "_index"),
            numpy_helper.from_array(w[channels, :].astype(np.float32), base + "_weight"),
        ]
    )
    x, y = node.input[0], node.output[0]
    new_nodes = [
        onnx.helper.make_node("Mul", [x, base + "_mask"], [base + "_masked"], name=base + MASK_NODE_SUFFIX),
        onnx.helper.make_node("Gather", [x, base + "_index"], [base + "_x"], name=base + "_Gather", axis=-1),
        onnx.helper.make_node("MatMul", [base + "_x", base + "_weight"], [base + "_y"], name=base),
    ]
    node.input[0] = base + "_masked"
    node.output[0] = base + "_main"
    add = onnx.helper.make_node("Add", [base + "_main", base + "_y"], [y], name=base + "_Add")
    position = list(model.graph.node).index(node)
    for offset, new in enumerate(new_nodes):
        model.graph.node.insert(position + offset, new)
    model.graph.node.insert(position + len(new_nodes) + 1, add)
    return base


def drop_masks(model: onnx.ModelProto) -> int:
    """Remove the split's mask Muls from a quantised model in place; return how many went."""
    masks = [node for node in model.graph.node if node.name.endswith(SIDE_SUFFIX + MASK_NODE_SUFFIX)]
    readers = consumer_map(model)
    for mask in masks:
        for node in readers.get(mask.output[0], []):
            node.input[:] = [mask.input[0] if name == mask.output[0] else name for name in node.input]
        model.graph.node.remove(mask)
    unused = {mask.input[1] for mask in masks}
    kept = [init for init in model.graph.initializer if init.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return len(masks)
