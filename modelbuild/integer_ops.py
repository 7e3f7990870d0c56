"""Rewrite a QDQ-quantised BERT graph into ONNX Runtime's integer kernels, with the same numbers.

ORT fuses each DequantizeLinear -> MatMul into MatMulIntegerToFloat at load, but leaves two costs
that its kernels can take over (measured in docs/quantization.md, "Integer kernels"):
- Q, K and V stay three GEMMs whose fp32 outputs MultiHeadAttention transposes and adds a bias
  to; QAttention runs one int8 product with packed weights straight into the head layout.
- A dense layer's bias stays a separate Add; MatMulIntegerToFloat takes it as its bias input.
Both kernels compute (x_q - zp) * w_q * scale + bias as the fused QDQ graph does. Where an outlier
side product (outlier_split.py) sits between the MatMul and its bias, the bias moves before it:
(main + bias) + side instead of (main + side) + bias, the same sum in another float order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from modelbuild.roles import consumer_map, producer_map

MS_DOMAIN = "com.microsoft"
PACKED_SUFFIX = "_qkv"
INTEGER_SUFFIX = "_integer"


@dataclass
class _Graph:
    """Look-ups over a graph that the rewrites keep current enough for one pass."""

    model: onnx.ModelProto

    def __post_init__(self) -> None:
        self.initializers = {init.name: init for init in self.model.graph.initializer}
        self.producers = producer_map(self.model)
        self.consumers = consumer_map(self.model)

    def producer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def replace(self, old: list[onnx.NodeProto], new: onnx.NodeProto) -> None:
        """Put `new` where the first of `old` stood and drop all of `old`."""
        nodes = self.model.graph.node
        nodes.insert(min(list(nodes).index(node) for node in old), new)
        for node in old:
            nodes.remove(node)


def fuse_integer_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite in place; return how many nodes of each integer kernel were written."""
    attention = _fuse_attention(_Graph(model))
    counts = {"QAttention": attention, "MatMulIntegerToFloat": _fuse_matmuls(_Graph(model))}
    _drop_unused(model)
    return counts


def _fuse_attention(graph: _Graph) -> int:
    fused = 0
    for attention in [n for n in graph.model.graph.node if n.op_type == "MultiHeadAttention"]:
        matmuls = [graph.producer(name, "MatMul") for name in attention.input[:3]]
        if all(matmuls) and len({m.input[0] for m in matmuls if m}) == 1:
            fused += _write_qattention(graph, attention, [m for m in matmuls if m])
    return fused


def _per_column(graph: _Graph, weight: onnx.NodeProto | None) -> bool:
    """A weight DequantizeLinear with one scale per output column (what packing can concatenate)."""
    if weight is None:
        return False
    columns = graph.array(weight.input[0]).shape[-1]
    return bool(graph.array(weight.input[1]).shape == (columns,))


def _write_qattention(graph: _Graph, attention: onnx.NodeProto, matmuls: list[onnx.NodeProto]) -> bool:
    activation = graph.producer(matmuls[0].input[0], "DequantizeLinear")
    weights = [graph.producer(m.input[1], "DequantizeLinear") for m in matmuls]
    has_bias_and_mask = len(attention.input) >= 5 and all(attention.input[3:5])
    if activation is None or not all(_per_column(graph, w) for w in weights) or not has_bias_and_mask:
        return False
    base = attention.name + PACKED_SUFFIX
    packed = [
        np.concatenate([graph.array(w.input[part]) for w in weights if w], axis=-1) for part in range(3)
    ]
    graph.model.graph.initializer.extend(
        numpy_helper.from_array(array, f"{base}_{part}")
        for part, array in zip(("weight", "scale", "zero_point"), packed, strict=True)
    )
    heads = next(a.i for a in attention.attribute if a.name == "num_heads")
    node = helper.make_node(
        "QAttention",
        [
            activation.input[0],  # the uint8 tensor QuantizeLinear made
            f"{base}_weight",
            attention.input[3],  # the packed Q, K, V bias
            activation.input[1],
            f"{base}_scale",
            attention.input[4],  # key lengths (mask index)
            activation.input[2],
            f"{base}_zero_point",
        ],
        list(attention.output[:1]),
        name=base,
        domain=MS_DOMAIN,
        num_heads=heads,
    )
    graph.replace([attention, *matmuls, *(w for w in weights if w)], node)
    return True


def _fuse_matmuls(graph: _Graph) -> int:
    fused = 0
    for matmul in [n for n in graph.model.graph.node if n.op_type == "MatMul"]:
        activation = graph.producer(matmul.input[0], "DequantizeLinear")
        weight = graph.producer(matmul.input[1], "DequantizeLinear")
        if activation is None or weight is None:
            continue  # an fp32 MatMul (kept, or an outlier side product)
        bias = _bias_add(graph, matmul.output[0]) or _bias_after_side(graph, matmul.output[0])
        inputs = [activation.input[0], weight.input[0], activation.input[1], weight.input[1]]
        inputs += [activation.input[2], weight.input[2], *([bias.constant] if bias else [])]
        node = helper.make_node(
            "MatMulIntegerToFloat",
            inputs,
            [bias.output if bias else matmul.output[0]],
            name=matmul.name + INTEGER_SUFFIX,
            domain=MS_DOMAIN,
        )
        graph.replace([matmul, weight, *([bias.add] if bias else [])], node)
        fused += 1
    return fused


@dataclass(frozen=True)
class _Bias:
    add: onnx.NodeProto  # the Add that goes
    constant: str  # the bias initializer
    output: str  # what the fused node writes


def _only_add(graph: _Graph, output: str) -> tuple[onnx.NodeProto, str] | None:
    """The Add that is the only reader of `output`, and its other input."""
    readers = graph.consumers.get(output, [])
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    others = [name for name in readers[0].input if name != output]
    return (readers[0], others[0]) if len(others) == 1 else None


def _bias_add(graph: _Graph, output: str) -> _Bias | None:
    """The Add of a constant that is the only reader of a MatMul output."""
    found = _only_add(graph, output)
    if found is None or found[1] not in graph.initializers:
        return None
    return _Bias(found[0], found[1], found[0].output[0])


def _bias_after_side(graph: _Graph, output: str) -> _Bias | None:
    """A bias Add behind an outlier side Add: it goes, and the side Add takes its output name."""
    side = _only_add(graph, output)
    bias = _bias_add(graph, side[0].output[0]) if side is not None else None
    if side is None or bias is None:
        return None
    side[0].output[0] = bias.output
    return _Bias(bias.add, bias.constant, output)


def _drop_unused(model: onnx.ModelProto) -> None:
    """Activation DequantizeLinears and initializers that no node reads any more."""
    graph = model.graph
    outputs = {out.name for out in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    kept = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
