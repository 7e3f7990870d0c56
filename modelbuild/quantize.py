"""Quantisation variants: static int8 (the recipe), dynamic int8, fp16; fp32 passes through."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from tokenizers import Tokenizer

from contract.cpu_features import VNNI_WEIGHTS, exact_fast_weight_type
from modelbuild import integer_ops, outlier_split, roles, smoothquant
from modelbuild.calibration import TextCalibrationReader, iter_feeds
from modelbuild.optimize import infer_shapes

WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
ACTIVATION_TYPES = WEIGHT_TYPES  # "int8" activations = S8S8, which ORT's CPU kernels do not fuse
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
CALIBRATE_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
# SmoothQuant where the outliers are: LayerNorm outputs feeding QKV and FFN1. The recipe can also
# smooth the attention output and the GELU output (SMOOTH_ALL_INPUTS) for all-int8 builds.
SMOOTH_LAYERNORM = ("LayerNormalization",)
SMOOTH_ALL_INPUTS = ("LayerNormalization", "MultiHeadAttention", "FastGelu")
SMOOTH_ALPHA = 0.75
CALIBRATION_SENTENCES = 400
# FFN down-projections read post-GELU activations with one or two huge channels on [CLS]/[SEP];
# in plain int8 they cost the most fidelity (short texts fell to cosine 0.93-0.97). On AVX2 hosts
# they ran no slower in fp32 than in U8U8, so all six stay fp32 there. On VNNI hosts int8 is much
# faster: there the outlier channels alone go to a small fp32 MatMul (outlier_split.py).
KEEP_FP32 = ("ffn2",)
SPLIT_OUTLIERS_VNNI = 2.0
# Without it the model carries no types for com.microsoft outputs and quantisers give up on them.
FLOAT_DEFAULT = {"DefaultTensorType": onnx.TensorProto.FLOAT}


@dataclass(frozen=True)
class StaticRecipe:
    """The static int8 recipe; every field lands in the manifest's quantization.settings.

    The dataclass defaults are the AVX2 recipe (uint8 weights, U8U8): there ORT's U8S8 kernel sums
    pairs of u8*s8 products in int16 (vpmaddubsw) and saturates; U8U8 widens first and stays exact.
    With VNNI, U8S8 is exact and 2x faster than U8U8: `for_cpu` picks per host.
    """

    weight_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    smooth_alpha: float | None = SMOOTH_ALPHA
    smooth_ops: tuple[str, ...] = SMOOTH_LAYERNORM
    calibration_sentences: int = CALIBRATION_SENTENCES
    keep_fp32: tuple[str, ...] = KEEP_FP32  # roles.select patterns: "ffn2", "ffn2.5", "*.5"
    split_outliers: float | None = None  # FFN2 input channels > this x p99 of maxima go fp32
    integer_ops: bool = False  # write QAttention / MatMulIntegerToFloat (measured on VNNI only)
    # Alternatives measured in docs/quantization.md; the defaults won.
    quant_format: str = "qdq"
    activation_type: str = "uint8"
    calibrate_method: str = "minmax"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("weight_type", WEIGHT_TYPES),
            ("activation_type", ACTIVATION_TYPES),
            ("quant_format", FORMATS),
            ("calibrate_method", CALIBRATE_METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {sorted(allowed)}")
        if self.integer_ops and (self.quant_format, self.activation_type) != ("qdq", "uint8"):
            raise ValueError("integer_ops rewrites QDQ graphs with uint8 activations: set quant_format='qdq'")

    @classmethod
    def for_weights(cls, weight_type: str) -> StaticRecipe:
        """The measured default for a fleet of VNNI hosts ("int8") or AVX2 hosts ("uint8")."""
        if weight_type == VNNI_WEIGHTS:
            return cls(
                weight_type=weight_type, keep_fp32=(), split_outliers=SPLIT_OUTLIERS_VNNI, integer_ops=True
            )
        return cls(weight_type=weight_type, keep_fp32=KEEP_FP32)

    @classmethod
    def for_cpu(cls, flags: Iterable[str]) -> StaticRecipe:
        """The default for hosts like one with these CPU flags (see docs/quantization.md)."""
        return cls.for_weights(exact_fast_weight_type(flags))

    def extra_options(self) -> dict[str, Any]:
        """Weights only in int8; MatMul outputs stay fp32 (an FFN channel reaches ~195)."""
        return {
            "OpTypesToExcludeOutputQuantization": ["MatMul"],
            "ActivationSymmetric": False,
            "WeightSymmetric": self.weight_type == "int8",
        }

    def settings(self) -> dict[str, Any]:
        kinds = {"int8": "s8", "uint8": "u8"}
        method = f"{self.quant_format}-{kinds[self.activation_type]}{kinds[self.weight_type]}"
        return {
            "method": method,
            "calibrate": self.calibrate_method,
            **asdict(self),
            "extra": self.extra_options(),
        }


def quantize_static_int8(
    model_path: Path,
    out_path: Path,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    recipe: StaticRecipe,
) -> Path:
    """SmoothQuant (optional) then QDQ quantize_static of the weight MatMuls, MinMax over texts."""
    model = onnx.load(str(model_path))
    texts = list(texts)[: recipe.calibration_sentences]
    if recipe.smooth_alpha is not None:
        feeds = iter_feeds(tokenizer, texts)
        model = smoothquant.smooth(model, feeds, recipe.smooth_alpha, recipe.smooth_ops)
    excluded = roles.select(roles.matmul_roles(model), recipe.keep_fp32)
    if recipe.split_outliers is not None:
        feeds = iter_feeds(tokenizer, texts)
        model, splits = outlier_split.split_outliers(model, feeds, recipe.split_outliers, skip=excluded)
        excluded += [split.matmul for split in splits]
        model = infer_shapes(model)
    quantize_static(
        model,
        str(out_path),
        TextCalibrationReader(tokenizer, texts),
        quant_format=FORMATS[recipe.quant_format],
        op_types_to_quantize=["MatMul"],
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=ACTIVATION_TYPES[recipe.activation_type],
        weight_type=WEIGHT_TYPES[recipe.weight_type],
        nodes_to_exclude=excluded,
        calibrate_method=CALIBRATE_METHODS[recipe.calibrate_method],
        extra_options=recipe.extra_options(),
    )
    if recipe.split_outliers is not None or recipe.integer_ops:
        _rewrite_quantized(out_path, recipe)
    return out_path


def _rewrite_quantized(path: Path, recipe: StaticRecipe) -> None:
    """Exact rewrites of the quantised graph: the calibration-only masks go, integer kernels come."""
    model = onnx.load(str(path))
    if recipe.split_outliers is not None:
        outlier_split.drop_masks(model)
    if recipe.integer_ops:
        integer_ops.fuse_integer_ops(model)
    onnx.save(model, str(path))


def quantize_dynamic_int8(model_path: Path, out_path: Path) -> Path:
    """The stock baseline: per-channel QInt8 weights, activations quantised at run time."""
    quantize_dynamic(
        model_path,
        out_path,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options=FLOAT_DEFAULT,
    )
    return out_path


def convert_fp16(model_path: Path, out_path: Path) -> Path:
    """fp16 weights and compute with fp32 inputs/outputs (for hosts with fast fp16 only)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(model_path)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out_path))
    return out_path
