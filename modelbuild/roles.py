"""Name each weight MatMul of a fused BERT graph by its role and layer, from graph structure.

Roles: qkv (feeds MultiHeadAttention), attn_out (reads it), ffn1 (feeds the GELU),
ffn2 (reads the GELU). Layers count in graph order. Used to pick MatMuls to keep out of int8.
"""

from __future__ import annotations

import onnx

ATTENTION_OPS = {"MultiHeadAttention", "Attention"}
GELU_OPS = {"FastGelu", "BiasGelu", "Gelu"}
OTHER = "other"


def consumer_map(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Each tensor name and the nodes that read it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def producer_map(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Each tensor name and the node that writes it."""
    return {out: node for node in model.graph.node for out in node.output}


def _upstream_op(name: str, producers: dict[str, onnx.NodeProto], depth: int = 3) -> str:
    """Walk a few Reshape/Transpose/Mul steps back to the op that produced a MatMul input."""
    for _ in range(depth):
        node = producers.get(name)
        if node is None:
            return OTHER
        if node.op_type in ATTENTION_OPS | GELU_OPS:
            return node.op_type
        name = node.input[0]
    return OTHER


def _role(
    node: onnx.NodeProto,
    consumers: dict[str, list[onnx.NodeProto]],
    producers: dict[str, onnx.NodeProto],
) -> str:
    downstream = {c.op_type for c in consumers.get(node.output[0], [])}
    if downstream & ATTENTION_OPS:
        return "qkv"
    if downstream & GELU_OPS:
        return "ffn1"
    upstream = _upstream_op(node.input[0], producers)
    if upstream in ATTENTION_OPS:
        return "attn_out"
    if upstream in GELU_OPS:
        return "ffn2"
    return OTHER


def matmul_roles(model: onnx.ModelProto) -> dict[str, str]:
    """Map MatMul node name -> "role.layer", e.g. "ffn2.5"."""
    consumers, producers = consumer_map(model), producer_map(model)
    roles: dict[str, str] = {}
    layer = 0
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        role = _role(node, consumers, producers)
        roles[node.name] = f"{role}.{layer}"
        if role == "ffn2":
            layer += 1
    return roles


def select(roles: dict[str, str], patterns: tuple[str, ...]) -> list[str]:
    """Nodes whose "role.layer" matches a pattern: "ffn2" (every layer), "ffn2.5", "*.5"."""

    def matches(label: str, pattern: str) -> bool:
        role, layer = label.split(".")
        want_role, _, want_layer = pattern.partition(".")
        return want_role in ("*", role) and want_layer in ("", layer)

    return [name for name, label in roles.items() if any(matches(label, p) for p in patterns)]
