"""The static-int8 weight type follows the CPU's int8 dot-product instructions."""

from pathlib import Path

import pytest

from contract.cpu_features import cpu_flags, exact_fast_weight_type
from contract.manifest import Manifest, Quantization
from modelbuild.quantize import KEEP_FP32, SPLIT_OUTLIERS_VNNI, StaticRecipe
from worker.engine import weights_mismatch

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "amx_int8"}
ZEN3 = {"avx2", "fma", "f16c"}


def test_flags_are_read_from_the_first_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "weights"),
    [(SAPPHIRE_RAPIDS, "int8"), ({"avx2", "avx_vnni"}, "int8"), (ZEN3, "uint8"), (set(), "uint8")],
)
def test_vnni_hosts_get_int8_weights_and_avx2_hosts_uint8(flags: set[str], weights: str) -> None:
    assert exact_fast_weight_type(flags) == weights


def test_each_host_kind_gets_its_measured_recipe() -> None:
    vnni, avx2 = StaticRecipe.for_cpu(SAPPHIRE_RAPIDS), StaticRecipe.for_cpu(ZEN3)
    assert (vnni.weight_type, vnni.keep_fp32, vnni.split_outliers) == ("int8", (), SPLIT_OUTLIERS_VNNI)
    assert (avx2.weight_type, avx2.keep_fp32, avx2.split_outliers) == ("uint8", KEEP_FP32, None)
    assert vnni.settings()["method"] == "qdq-u8s8"
    assert (vnni.integer_ops, avx2.integer_ops) == (True, False)  # measured on VNNI hosts only
    with pytest.raises(ValueError, match="choose from"):
        StaticRecipe.for_weights("int4")
    with pytest.raises(ValueError, match="quant_format='qdq'"):
        StaticRecipe(weight_type="int8", integer_ops=True, quant_format="qoperator")


def _manifest(quant: str, weight_type: str) -> Manifest:
    return Manifest(
        name="m",
        dims=4,
        max_seq_length=8,
        pooling="mean",
        normalize=True,
        quantization=Quantization(format=quant, settings={"weight_type": weight_type}),  # type: ignore[arg-type]
        file="model.onnx",
        sha256="0" * 64,
        tokenizer_sha256="0" * 64,
        source="s",
    )


def test_a_worker_warns_when_its_cpu_does_not_suit_the_artifact() -> None:
    assert weights_mismatch(_manifest("static-int8", "int8"), SAPPHIRE_RAPIDS) is None
    assert weights_mismatch(_manifest("static-int8", "uint8"), ZEN3) is None
    assert weights_mismatch(_manifest("dynamic-int8", "int8"), ZEN3) is None
    saturating = weights_mismatch(_manifest("static-int8", "int8"), ZEN3)
    assert saturating is not None and "--weights uint8" in saturating
    slow = weights_mismatch(_manifest("static-int8", "uint8"), SAPPHIRE_RAPIDS)
    assert slow is not None and "--weights int8" in slow
