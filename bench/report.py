"""The benchmark's outputs: the CPU line, a markdown table (stdout and docs) and a bar chart."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

LSCPU_FIELDS = ("Model name", "CPU family", "Model")
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
MISSING = "n/a"
CHART_WIDTH_IN = 9.0
CHART_ROW_HEIGHT_IN = 0.6
CHART_DPI = 120
CHART_X_HEADROOM = 1.25  # room for the labels right of the longest bar
COLUMNS = (
    "variant",
    "sentences/s",
    "× PyTorch",
    "STS-B dev Spearman ×100",
    "mean cos to fp32",
    "min cos to fp32",
    "note",
)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    sentences_per_s: float | None = None
    ratio: float | None = None
    spearman: float | None = None
    mean_cos: float | None = None
    min_cos: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        return [
            f"{self.name} ({self.label})",
            fmt(self.sentences_per_s, "{:,.0f}"),
            fmt(self.ratio, "{:.2f}×"),
            fmt(self.spearman, "{:.2f}"),
            fmt(self.mean_cos, "{:.4f}"),
            fmt(self.min_cos, "{:.4f}"),
            self.note,
        ]


def fmt(value: float | None, pattern: str) -> str:
    return MISSING if value is None else pattern.format(value)


def cpu_description() -> str:
    """`lscpu` model name, family and model number, and the SIMD flags int8 kernels care about."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (lscpu failed)"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("Flags", "").split())
    simd = ", ".join(flag if flag in flags else f"no {flag}" for flag in VECTOR_FLAGS)
    name, family, model = (fields.get(key, "?") for key in LSCPU_FIELDS)
    return f"{name} (family {family}, model {model}; {simd})"


def markdown(rows: Sequence[Row], header_lines: Sequence[str]) -> str:
    lines = [f"- {line}" for line in header_lines]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bar_chart(rows: Sequence[Row], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [row for row in rows if row.sentences_per_s is not None]
    height = CHART_ROW_HEIGHT_IN * (len(timed) + 2)
    figure, axes = plt.subplots(figsize=(CHART_WIDTH_IN, height))
    speeds = [row.sentences_per_s or 0.0 for row in timed]
    bars = axes.barh([row.name for row in timed], speeds, color="tab:blue")
    labels = [f"{row.sentences_per_s:,.0f}/s  {fmt(row.ratio, '{:.2f}×')}" for row in timed]
    axes.bar_label(bars, labels=labels, padding=4)
    axes.invert_yaxis()
    axes.set_xlabel("sentences/s (higher is better)")
    axes.set_xlim(0, max(speeds, default=1.0) * CHART_X_HEADROOM)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=CHART_DPI)
    plt.close(figure)
