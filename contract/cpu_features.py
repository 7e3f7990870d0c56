"""Which int8 dot-product instructions this CPU has.

They decide which static-int8 weights are both exact and fast in ONNX Runtime's CPU kernels:
with VNNI (or AMX) the u8 x s8 kernel accumulates in int32 and is the fast one; without it, on
AVX2, u8 x s8 sums pairs of products in int16 (vpmaddubsw) and saturates, so uint8 weights
(u8 x u8, widened before multiplying) are the exact choice. See docs/quantization.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
VNNI_WEIGHTS = "int8"
AVX2_WEIGHTS = "uint8"


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The x86 `flags` of the first CPU; empty where the file or the field is missing (non-Linux, ARM)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_int8_dot(flags: Iterable[str]) -> bool:
    return not INT8_DOT_FLAGS.isdisjoint(flags)


def exact_fast_weight_type(flags: Iterable[str]) -> str:
    """Static-int8 weight type that is exact and fastest on a CPU with these flags."""
    return VNNI_WEIGHTS if has_int8_dot(flags) else AVX2_WEIGHTS
