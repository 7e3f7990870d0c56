"""Sentences/s and STS-B dev accuracy of the static-INT8 recipe variants of docs/quantization.md.

Variants are read from bench/quant_variants.json (StaticRecipe fields, or the kinds fp32, fp32-raw,
dynamic, dynamic-stock), built once with modelbuild's own functions into --workdir, and run through
the serving encoder (worker.engine.SentenceEncoder). Timed rounds are interleaved, the order rotated
each round; the table gives the median round. Compare ratios within one run: the host is shared.

    .venv/bin/python bench/quant_variants.py --torch --markdown bench/out/quant_variants.md
    .venv/bin/python bench/quant_variants.py --variants opt,c2_kffn2 --n 64 --repeats 1 --accuracy-pairs 50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import report
from peers import MAX_TOKENS_PER_ROW, REPO_ROOT

from contract.codec import Matrix
from contract.manifest import TOKENIZER_FILE, OrtSession
from contract.settings import FleetSettings
from modelbuild.accuracy import StsPairs, cosine_report, read_stsb, stsb_spearman
from modelbuild.calibration import load_tokenizer, read_corpus
from modelbuild.export import export_onnx
from modelbuild.optimize import DISABLED_OPTIMIZERS, MODEL_TYPE, optimize
from modelbuild.quantize import StaticRecipe, quantize_dynamic_int8, quantize_static_int8
from modelbuild.source import SourceModel, read_source
from worker.engine import SentenceEncoder

DEFAULT_VARIANTS_FILE = Path(__file__).with_suffix(".json")
DEFAULT_WORKDIR = REPO_ROOT / "artifacts" / "quant-variants"
DEFAULT_STSB = REPO_ROOT.parent / "shared" / "data" / "stsb" / "stsb-en-dev.csv"
DEFAULT_N = 2048
DEFAULT_REPEATS = 5
DEFAULT_THREADS = 2
DEFAULT_BATCH_SIZE = 32
WARMUP_TEXTS = 64
DIGEST_CHARS = 10
STATS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "best": min}

STATIC, FP32, FP32_RAW, DYNAMIC, DYNAMIC_STOCK = "static", "fp32", "fp32-raw", "dynamic", "dynamic-stock"
KINDS = (STATIC, FP32, FP32_RAW, DYNAMIC, DYNAMIC_STOCK)
REFERENCE_KIND = FP32
BASELINE_KIND = DYNAMIC_STOCK
TORCH = "PyTorch fp32"
META_KEYS = ("kind", "note", "corpus")
TUPLE_FIELDS = ("smooth_ops", "keep_fp32")
# The graph as built (SkipLayerNorm left unfused and kept so at load) vs ORT's defaults.
BUILT_SESSION = OrtSession(graph_optimization_level="all", disabled_optimizers=list(DISABLED_OPTIMIZERS))
STOCK_SESSION = OrtSession(graph_optimization_level="all")
STOCK_KINDS = (FP32_RAW, DYNAMIC_STOCK)
COLUMNS = (
    "variant",
    "sent/s",
    "× fp32 ORT",
    "× dyn_stock",
    "× PyTorch",
    "dev Spearman",
    "mean cos",
    "min cos",
)

Encode = Callable[[list[str]], Matrix]


@dataclass(frozen=True)
class Variant:
    """One named entry of the JSON: a kind, and for static builds a recipe and calibration texts."""

    name: str
    kind: str
    recipe: StaticRecipe | None = None
    corpus: tuple[int, ...] | None = None  # indices into read_corpus(); None = the corpus as is

    def cache_name(self) -> str:
        """File name that changes whenever the recipe or the corpus does."""
        spec = {"kind": self.kind, "recipe": repr(self.recipe), "corpus": self.corpus}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:DIGEST_CHARS]
        return f"{self.name}-{digest}.onnx"


@dataclass
class Result:
    name: str
    speed: float | None = None
    spearman: float | None = None
    mean_cos: float | None = None
    min_cos: float | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)

    def cells(self) -> list[str]:
        ratios = [self.ratios.get(key) for key in (REFERENCE_KIND, BASELINE_KIND, TORCH)]
        return [
            self.name,
            report.fmt(self.speed, "{:.0f}"),
            *(report.fmt(ratio, "{:.2f}") for ratio in ratios),
            report.fmt(self.spearman, "{:.2f}"),
            report.fmt(self.mean_cos, "{:.5f}"),
            report.fmt(self.min_cos, "{:.5f}"),
        ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--variants-file", type=Path, default=DEFAULT_VARIANTS_FILE, help="JSON of named variants")
    add("--variants", default="", help="comma-separated subset (default: every variant in the file)")
    add("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache of built ONNX files")
    add("--stsb", type=Path, default=DEFAULT_STSB, help="STS-B dev CSV (timed text and accuracy)")
    add("--n", type=int, default=DEFAULT_N, help="unique dev sentences per timed pass")
    add("--repeats", type=int, default=DEFAULT_REPEATS, help="interleaved timed rounds (0: accuracy only)")
    add("--stat", choices=sorted(STATS), default="median", help="statistic over the rounds")
    add("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads (ORT and PyTorch)")
    add("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    add("--accuracy-pairs", type=int, default=0, help="first K dev pairs for accuracy (0 = all)")
    add("--torch", action="store_true", help="time sentence-transformers PyTorch fp32 too")
    add("--markdown", type=Path, default=None, help="also write the table here")
    return parser.parse_args(argv)


# ---- the variants file ----


def _recipe(fields_: dict[str, Any]) -> StaticRecipe:
    known = {f.name for f in fields(StaticRecipe)}
    unknown = set(fields_) - known
    if unknown:
        raise ValueError(f"unknown StaticRecipe fields {sorted(unknown)}; known: {sorted(known)}")
    values: dict[str, Any] = {
        key: tuple(value) if key in TUPLE_FIELDS else value for key, value in fields_.items()
    }
    return StaticRecipe(**values)


def _variant(name: str, entry: dict[str, Any], corpora: dict[str, Any]) -> Variant:
    kind = entry.get("kind", STATIC)
    if kind not in KINDS:
        raise ValueError(f"variant {name}: unknown kind {kind!r}; choose from {KINDS}")
    if kind != STATIC:
        return Variant(name, kind)
    recipe = _recipe({key: value for key, value in entry.items() if key not in META_KEYS})
    corpus_name = entry.get("corpus")
    corpus = tuple(corpora[corpus_name]["indices"]) if corpus_name else None
    return Variant(name, kind, recipe, corpus)


def load_variants(path: Path) -> dict[str, Variant]:
    data = json.loads(path.read_text(encoding="utf-8"))
    corpora = data.get("corpora", {})
    return {name: _variant(name, entry, corpora) for name, entry in data["variants"].items()}


def select(variants: dict[str, Variant], wanted: str) -> list[Variant]:
    """The named subset, in the order given; the fp32 reference is added when missing."""
    names = [name.strip() for name in wanted.split(",") if name.strip()] or list(variants)
    missing = [name for name in names if name not in variants]
    if missing:
        raise SystemExit(f"unknown variants {missing}; the file has {list(variants)}")
    chosen = [variants[name] for name in names]
    if not any(v.kind == REFERENCE_KIND for v in chosen):
        chosen.insert(0, next(v for v in variants.values() if v.kind == REFERENCE_KIND))
    return chosen


# ---- building (mirrors modelbuild/build.py: export -> optimise -> quantise) ----


def _write_once(path: Path, make: Callable[[Path], object]) -> Path:
    """Build into a temporary name and rename, so an interrupted build is never reused."""
    if not path.exists():
        partial = path.with_suffix(".partial" + path.suffix)
        make(partial)
        partial.replace(path)
    return path


class Builder:
    """Builds each variant's ONNX file once into `workdir`, sharing the export and the fp32 graph."""

    def __init__(self, source: SourceModel, workdir: Path) -> None:
        self.source = source
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def export(self) -> Path:
        return _write_once(self.workdir / "export.onnx", lambda out: export_onnx(self.source.path, out))

    def fp32(self) -> Path:
        src = self.source
        return _write_once(
            self.workdir / "fp32.onnx", lambda out: optimize(self.export(), out, src.num_heads, src.dims)
        )

    def stock_fp32(self) -> Path:
        return _write_once(self.workdir / "stock-opt.onnx", self._stock_optimize)

    def _stock_optimize(self, out: Path) -> None:
        from onnxruntime.transformers.optimizer import optimize_model

        model = optimize_model(
            str(self.export()),
            model_type=MODEL_TYPE,
            num_heads=self.source.num_heads,
            hidden_size=self.source.dims,
            opt_level=0,
        )
        model.save_model_to_file(str(out))

    def build(self, variant: Variant) -> Path:
        makers: dict[str, Callable[[], Path]] = {
            FP32: self.fp32,
            FP32_RAW: self.export,
            DYNAMIC: lambda: self._dynamic(variant, self.fp32()),
            DYNAMIC_STOCK: lambda: self._dynamic(variant, self.stock_fp32()),
            STATIC: lambda: self._static(variant),
        }
        started = time.perf_counter()
        path = makers[variant.kind]()
        print(f"{variant.name}: {path} ({time.perf_counter() - started:.1f} s)", flush=True)
        return path

    def _dynamic(self, variant: Variant, graph: Path) -> Path:
        return _write_once(self.workdir / variant.cache_name(), lambda out: quantize_dynamic_int8(graph, out))

    def _static(self, variant: Variant) -> Path:
        recipe, graph = variant.recipe or StaticRecipe(), self.fp32()
        tokenizer = load_tokenizer(self.source.path / TOKENIZER_FILE, self.source.max_seq_length)
        texts = calibration_texts(variant.corpus)
        return _write_once(
            self.workdir / variant.cache_name(),
            lambda out: quantize_static_int8(graph, out, tokenizer, texts, recipe),
        )


def calibration_texts(indices: tuple[int, ...] | None) -> list[str]:
    corpus = read_corpus()
    return corpus if indices is None else [corpus[i] for i in indices]


# ---- running ----


def settings_for(threads: int, batch_size: int) -> FleetSettings:
    """One process, `threads` intra-op threads, batches cut by count alone."""
    return FleetSettings(
        intra_op_threads=threads,
        worker_concurrency=1,
        max_batch_size=batch_size,
        token_budget=batch_size * MAX_TOKENS_PER_ROW,
    )


def open_encoder(
    source: SourceModel, variant: Variant, path: Path, settings: FleetSettings
) -> SentenceEncoder:
    session = STOCK_SESSION if variant.kind in STOCK_KINDS else BUILT_SESSION
    tokenizer_file = source.path / TOKENIZER_FILE
    return SentenceEncoder.open(
        path, tokenizer_file, source.max_seq_length, source.normalize, session, settings
    )


def torch_encode(source: SourceModel, threads: int, batch_size: int) -> Encode:
    """sentence-transformers on PyTorch fp32, the speed reference of the docs."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(source.path), device="cpu")

    def encode(texts: list[str]) -> Matrix:
        vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)

    return encode


def timed_sentences(pairs: StsPairs, count: int) -> list[str]:
    """The first `count` unique dev sentences, in file order (pair by pair)."""
    ordered = dict.fromkeys(text for pair in zip(pairs.first, pairs.second, strict=True) for text in pair)
    return list(ordered)[:count]


def time_rounds(encoders: dict[str, Encode], texts: list[str], repeats: int) -> dict[str, list[float]]:
    """Sentences/s of every encoder per round; each round visits all, in a rotated order."""
    for encode in encoders.values():
        encode(texts[:WARMUP_TEXTS])
    names = list(encoders)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            encoders[name](texts)
            speeds[name].append(len(texts) / (time.perf_counter() - started))
    return speeds


def measure_accuracy(encoders: dict[str, SentenceEncoder], reference: str, pairs: StsPairs) -> list[Result]:
    """Spearman x100 on the pairs, and cosine of every unique sentence's vector to the reference's."""
    texts = sorted(set(pairs.first) | set(pairs.second))
    ref_vectors = encoders[reference].embed(texts).vectors
    results = []
    for name, encoder in encoders.items():
        cosines = cosine_report(ref_vectors, encoder.embed(texts).vectors)
        spearman = stsb_spearman(encoder, pairs)
        results.append(Result(name, spearman=spearman, mean_cos=cosines.mean, min_cos=cosines.min))
        print(f"{name}: Spearman {spearman:.2f}, cosine mean {cosines.mean:.5f} min {cosines.min:.5f}")
    return results


def attach_speeds(results: list[Result], speeds: dict[str, float], bases: dict[str, str]) -> list[Result]:
    """Fill sent/s and the ratio to each base (fp32 ORT, dyn_stock, PyTorch) that was run."""
    if TORCH in speeds:
        results = [*results, Result(TORCH)]
    for result in results:
        speed = result.speed = speeds.get(result.name)
        for key, base in bases.items():
            result.ratios[key] = speed / speeds[base] if speed is not None and base in speeds else None
    return results


# ---- report ----


def header_lines(args: argparse.Namespace, pairs: StsPairs, timed: int) -> list[str]:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"CPU: {report.cpu_description()}",
        f"load average (1, 5, 15 min) at start: {load}",
        f"speed: {timed} unique dev sentences, batch {args.batch_size}, {args.threads} threads, "
        f"{args.stat} of {args.repeats} interleaved rounds; accuracy: {len(pairs.scores)} dev pairs",
    ]


def markdown(results: list[Result], lines: list[str]) -> str:
    out = [f"- {line}" for line in lines]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(result.cells()) + " |" for result in results]
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace, variants: list[Variant], texts: list[str]) -> list[Result]:
    """Build, measure accuracy (untimed), then time the interleaved rounds."""
    source = read_source()
    builder = Builder(source, args.workdir)
    paths = {variant.name: builder.build(variant) for variant in variants}
    settings = settings_for(args.threads, args.batch_size)
    encoders = {v.name: open_encoder(source, v, paths[v.name], settings) for v in variants}
    reference = next(v.name for v in variants if v.kind == REFERENCE_KIND)
    results = measure_accuracy(encoders, reference, read_stsb(args.stsb).head(args.accuracy_pairs))
    if args.repeats == 0:  # accuracy screen only
        return results
    encode: dict[str, Encode] = {name: _vectors_of(encoder) for name, encoder in encoders.items()}
    if args.torch:
        encode[TORCH] = torch_encode(source, args.threads, args.batch_size)
    rounds = time_rounds(encode, texts, args.repeats)
    speeds = {name: STATS[args.stat](runs) for name, runs in rounds.items()}
    baseline = next((v.name for v in variants if v.kind == BASELINE_KIND), "")
    return attach_speeds(results, speeds, {REFERENCE_KIND: reference, BASELINE_KIND: baseline, TORCH: TORCH})


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    variants = select(load_variants(args.variants_file), args.variants)
    pairs = read_stsb(args.stsb)
    texts = timed_sentences(pairs, args.n)
    lines = header_lines(args, pairs.head(args.accuracy_pairs), len(texts))
    table = markdown(run(args, variants, texts), lines)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table, encoding="utf-8")


def _vectors_of(encoder: SentenceEncoder) -> Encode:
    return lambda texts: encoder.embed(texts).vectors


if __name__ == "__main__":
    main()
