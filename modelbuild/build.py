"""Orchestrate a build: export -> optimise -> quantise -> check against fp32 -> manifest."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from contract.cpu_features import cpu_flags
from contract.manifest import (
    MANIFEST_FILE,
    TOKENIZER_FILE,
    Manifest,
    OrtSession,
    Quantization,
    sha256_of,
    write_manifest,
)
from contract.settings import FleetSettings
from modelbuild import quantize
from modelbuild.accuracy import CHECK_SENTENCES, compare
from modelbuild.calibration import default_corpus_path, load_tokenizer, read_corpus
from modelbuild.export import OUTPUT_NAME, export_onnx
from modelbuild.optimize import DISABLED_OPTIMIZERS, optimize
from modelbuild.source import SourceModel, read_source
from worker.engine import SentenceEncoder

MODEL_FILE = "model.onnx"
OUTPUT_KIND = "token_embeddings"
QUANT_FORMATS = ("static-int8", "dynamic-int8", "fp32", "fp16")
TOOL_PACKAGES = ("onnxruntime", "onnx", "torch", "transformers")
GRAPH_FUSIONS = "ORT transformers optimizer: MultiHeadAttention, FastGelu; SkipLayerNorm off"
SESSION = OrtSession(graph_optimization_level="all", disabled_optimizers=list(DISABLED_OPTIMIZERS))
CHECK_SETTINGS = FleetSettings(intra_op_threads=2, worker_concurrency=1)


@dataclass(frozen=True)
class BuildRequest:
    out_dir: Path
    source_dir: Path | None = None
    calibration_file: Path | None = None
    quant: str = "static-int8"
    recipe: quantize.StaticRecipe = field(default_factory=lambda: quantize.StaticRecipe.for_cpu(cpu_flags()))


def _quantizer(request: BuildRequest, source: SourceModel) -> Callable[[Path, Path], Path]:
    """The step that turns the optimised fp32 graph into the artifact's graph."""
    if request.quant == "static-int8":
        tokenizer = load_tokenizer(source.path / TOKENIZER_FILE, source.max_seq_length)
        texts = read_corpus(request.calibration_file)
        return lambda src, dst: quantize.quantize_static_int8(src, dst, tokenizer, texts, request.recipe)
    if request.quant == "dynamic-int8":
        return quantize.quantize_dynamic_int8
    if request.quant == "fp16":
        return quantize.convert_fp16
    if request.quant == "fp32":
        return lambda src, dst: Path(shutil.copyfile(src, dst))
    raise ValueError(f"unknown quantisation {request.quant!r}; choose from {QUANT_FORMATS}")


def _settings(request: BuildRequest) -> dict[str, object]:
    tools = {name: metadata.version(name) for name in TOOL_PACKAGES}
    settings: dict[str, object] = {"tools": tools, "graph": GRAPH_FUSIONS}
    if request.quant == "static-int8":
        settings.update(request.recipe.settings())
        corpus = request.calibration_file or default_corpus_path()
        settings["calibration"] = corpus.name if request.calibration_file is None else str(corpus)
        settings["calibration_sha256"] = sha256_of(corpus)
    elif request.quant == "dynamic-int8":
        settings.update({"per_channel": True, "weight_type": "int8", "op_types": ["MatMul"]})
    return settings


def _check(source: SourceModel, fp32_path: Path, model_path: Path) -> dict[str, float]:
    """Cosine of the artifact's vectors to the fp32 graph's, on the built-in check sentences,
    through the same encoder the workers serve with."""

    def encoder(path: Path) -> SentenceEncoder:
        return SentenceEncoder.open(
            path,
            source.path / TOKENIZER_FILE,
            source.max_seq_length,
            source.normalize,
            SESSION,
            CHECK_SETTINGS,
        )

    return compare(encoder(fp32_path), encoder(model_path), CHECK_SENTENCES).as_dict()


def _manifest(request: BuildRequest, source: SourceModel, accuracy: dict[str, float]) -> Manifest:
    out = request.out_dir
    return Manifest(
        name=source.name,
        dims=source.dims,
        max_seq_length=source.max_seq_length,
        pooling="mean",
        normalize=source.normalize,
        quantization=Quantization(format=request.quant, settings=_settings(request)),
        file=MODEL_FILE,
        sha256=sha256_of(out / MODEL_FILE),
        tokenizer_sha256=sha256_of(out / TOKENIZER_FILE),
        source=str(source.path),
        accuracy=accuracy,
        ort_session=SESSION,
        output=OUTPUT_KIND,
        output_name=OUTPUT_NAME,
    )


def build(request: BuildRequest) -> Manifest:
    """Run every step with a progress display; the manifest is written last.

    A stale manifest is removed first, so an interrupted build never looks complete.
    """
    source = read_source(request.source_dir)
    quantizer = _quantizer(request, source)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    (request.out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with tempfile.TemporaryDirectory() as tmp, Progress(*columns) as progress:
        work = Path(tmp)
        steps = progress.add_task("export", total=5)

        def step(name: str) -> None:
            progress.update(steps, advance=1, description=name)

        export_onnx(source.path, work / "export.onnx")
        step("optimise")
        optimize(work / "export.onnx", work / "fp32.onnx", source.num_heads, source.dims)
        step(f"quantise ({request.quant})")
        quantizer(work / "fp32.onnx", request.out_dir / MODEL_FILE)
        step("check against fp32")
        accuracy = _check(source, work / "fp32.onnx", request.out_dir / MODEL_FILE)
        step("manifest")
        shutil.copyfile(source.path / TOKENIZER_FILE, request.out_dir / TOKENIZER_FILE)
        manifest = _manifest(request, source, accuracy)
        write_manifest(request.out_dir, manifest)
        step("done")
    return manifest
