"""ONNX Runtime transformer graph optimisation, tuned for the int8 CPU kernels.

SkipLayerNormalization is left unfused: its kernel was ~4x slower than Add+LayerNormalization
in ORT 1.32, so consumers also keep ORT from re-fusing it at load (see DISABLED_OPTIMIZERS).
Shapes are inferred afterwards because quantize_static skips MatMuls it cannot type.
"""

from __future__ import annotations

from pathlib import Path

import onnx

DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
MODEL_TYPE = "bert"
AUTO_MERGE_SHAPES = True
MS_DOMAIN = "com.microsoft"


def optimize(
    fp32_path: Path, out_path: Path, num_heads: int, hidden_size: int, fast_gelu: bool = True
) -> Path:
    """Fuse attention into MultiHeadAttention and GELU(+bias) into FastGelu; LayerNorm stays."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(MODEL_TYPE)
    options.enable_skip_layer_norm = False
    options.enable_embed_layer_norm = False
    options.use_multi_head_attention = True
    options.enable_gelu_approximation = fast_gelu
    optimized = optimize_model(
        str(fp32_path),
        model_type=MODEL_TYPE,
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    model = optimized.model
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(infer_shapes(model), str(out_path))
    return out_path


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symbolic shape inference that understands com.microsoft ops (MultiHeadAttention...)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred: onnx.ModelProto = SymbolicShapeInference.infer_shapes(model, auto_merge=AUTO_MERGE_SHAPES)
    return inferred
