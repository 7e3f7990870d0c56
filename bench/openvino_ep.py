"""Does ONNX Runtime's OpenVINO EP run our static-int8 models faster than its default CPU EP?

Its wheel (onnxruntime-openvino) conflicts with the project's onnxruntime, so this runs in its own
venv and imports nothing from the project:

    python3.11 -m venv bench/.venv-ort-openvino
    bench/.venv-ort-openvino/bin/pip install onnxruntime-openvino tokenizers numpy
    bench/.venv-ort-openvino/bin/python bench/openvino_ep.py

It reads the product artifact (`make artifact`) and QDQ builds that `.venv/bin/python
bench/quant_variants.py --variants v_s8_split2,v_s8_all --repeats 0` writes to artifacts/quant-variants
(their names carry a hash of the recipe; the newest build of each is used).

All variants embed the same 2,048 STS-B dev sentences, tokenised once outside the timer (sorted by
length, batches of 32 padded to their longest): sentences/s counts session.run plus mean pooling.
After a 64-sentence warm-up the first full pass is reported apart (cold: any per-shape compiling);
then each round times every variant once, order rotated, and the table gives the median. Cosines
are to the fp32 graph on the CPU EP. Without the OpenVINO EP (e.g. under .venv/bin/python) its rows
are skipped: a cross-check of the CPU EP across onnxruntime versions.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
STSB_DEV = REPO.parent / "shared/data/stsb/stsb-en-dev.csv"
TOKENIZER = REPO / "artifacts/all-MiniLM-L6-v2/tokenizer.json"
VARIANTS_DIR = REPO / "artifacts/quant-variants"


def newest_variant(name: str) -> Path:
    """The latest build of a quant_variants.py variant (file names end in a hash of the recipe)."""
    builds = sorted(VARIANTS_DIR.glob(f"{name}-*.onnx"), key=lambda path: path.stat().st_mtime)
    return builds[-1] if builds else VARIANTS_DIR / f"{name}-*.onnx"


MODELS = {
    "A product (QAttention, MatMulIntegerToFloat)": REPO / "artifacts/all-MiniLM-L6-v2/model.onnx",
    "B s8_split2 QDQ": newest_variant("v_s8_split2"),
    "C s8_all QDQ": newest_variant("v_s8_all"),
    "fp32 (MHA, FastGelu)": VARIANTS_DIR / "fp32.onnx",
    "fp32 plain export (no contrib ops)": VARIANTS_DIR / "export.onnx",
}
MODEL_A, MODEL_B, MODEL_C, MODEL_FP32, MODEL_EXPORT = MODELS
N_SENTENCES = 2048
WARMUP_SENTENCES = 64
BATCH_SIZE = 32
MAX_TOKENS = 256
MIN_TOKENS = 1.0  # guards the mean-pooling divisor
ROUNDS = 5
THREADS = 2
CPU_EP = "CPUExecutionProvider"
OV_EP = "OpenVINOExecutionProvider"
OV_OPTIONS = {"device_type": "CPU", "num_of_threads": str(THREADS)}
WHEELS = ("onnxruntime", "onnxruntime-openvino", "tokenizers", "numpy")

Batch = dict[str, npt.NDArray[np.int64]]
Vectors = npt.NDArray[np.float32]


@dataclass
class Variant:
    """One (model, execution provider, provider options) combination and its measurements."""

    model: str
    ep: str
    ov_options: dict[str, str] = field(default_factory=dict)
    session: ort.InferenceSession = field(init=False, repr=False)
    vectors: Vectors = field(init=False, repr=False)
    load_s: float = 0.0
    cold_s: float = 0.0
    passes: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        extra = "".join(f", {key}={value}" for key, value in self.ov_options.items())
        return f"{self.model} · {'OpenVINO' if self.ep == OV_EP else 'CPU'} EP{extra}"

    def open(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        start = time.perf_counter()
        providers = [self.ep, CPU_EP] if self.ep == OV_EP else [CPU_EP]
        provider_options = [{**OV_OPTIONS, **self.ov_options}, {}] if self.ep == OV_EP else [{}]
        self.session = ort.InferenceSession(
            str(MODELS[self.model]),
            options,
            providers=providers,
            provider_options=provider_options,
            disabled_optimizers=["SkipLayerNormFusion"],
        )
        self.load_s = time.perf_counter() - start


def read_sentences(path: Path, count: int) -> list[str]:
    """The first `count` unique sentences, row by row: sentence1 then sentence2 (the file has no header)."""
    seen: dict[str, None] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            seen.update(dict.fromkeys(row[:2]))
            if len(seen) >= count:
                break
    return list(seen)[:count]


def make_batches(tokenizer: Tokenizer, sentences: list[str]) -> list[Batch]:
    """Length-sorted batches of BATCH_SIZE, each padded to its longest (pads: id 0, mask 0)."""
    encodings = sorted(tokenizer.encode_batch(sentences), key=lambda encoding: len(encoding.ids))
    batches = []
    for start in range(0, len(encodings), BATCH_SIZE):
        chunk = encodings[start : start + BATCH_SIZE]
        ids = np.zeros((len(chunk), max(len(encoding.ids) for encoding in chunk)), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(chunk):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return batches


def embed(session: ort.InferenceSession, batches: list[Batch]) -> Vectors:
    """Mean-pooled, L2-normalised last_hidden_state of every batch, in batch order."""
    out = []
    for batch in batches:
        hidden = session.run(None, batch)[0]
        mask = batch["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), MIN_TOKENS)
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(out).astype(np.float32)


def timed_pass(variant: Variant, batches: list[Batch]) -> float:
    """Seconds for one pass; keeps the pass's vectors."""
    start = time.perf_counter()
    variant.vectors = embed(variant.session, batches)
    return time.perf_counter() - start


def build_variants() -> list[Variant]:
    """The CPU EP rows, then the OpenVINO EP rows when this onnxruntime has the EP."""
    variants = [Variant(model, CPU_EP) for model in (MODEL_A, MODEL_B, MODEL_C, MODEL_FP32)]
    if OV_EP in ort.get_available_providers():
        variants += [Variant(model, OV_EP) for model in MODELS]
        variants += [Variant(model, OV_EP, {"precision": "ACCURACY"}) for model in (MODEL_B, MODEL_C)]
    return variants


def header() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    fields = dict(line.split(":", 1) for line in lscpu if ":" in line)
    cpu = ", ".join(
        f"{name} {fields.get(name, '?').strip()}" for name in ("Model name", "CPU family", "Model")
    )
    wheels = {dist.metadata["Name"]: dist.version for dist in importlib.metadata.distributions()}
    versions = {name: wheels[name] for name in WHEELS if name in wheels}
    bundled = sorted(path.name for path in Path(ort.__file__).parent.glob("capi/libopenvino.so.*.*.*"))
    return "\n".join(
        [
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- CPU: {cpu}, {os.cpu_count()} logical CPUs; load average at start: "
            + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
            f"- versions: {', '.join(f'{name} {version}' for name, version in versions.items())}; "
            f"bundled OpenVINO runtime: {', '.join(bundled) or 'none'}",
            f"- {N_SENTENCES} sentences, batches of {BATCH_SIZE}, {THREADS} threads, "
            f"{ROUNDS} interleaved rounds (median); tokenisation outside the timer; "
            f"OpenVINO EP options {OV_OPTIONS}",
        ]
    )


def table(variants: list[Variant], reference: Vectors) -> str:
    """Markdown table: median sentences/s, ratios to A and B on the CPU EP, cosines to fp32, cold pass."""
    rate = {variant.label: N_SENTENCES / statistics.median(variant.passes) for variant in variants}
    base_a = rate[Variant(MODEL_A, CPU_EP).label]
    base_b = rate[Variant(MODEL_B, CPU_EP).label]
    rows = [
        "| variant | sentences/s (median) | × A CPU EP | × B CPU EP | mean cos | min cos "
        "| cold pass s | load s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        cosines = np.einsum("ij,ij->i", variant.vectors, reference)
        rows.append(
            f"| {variant.label} | {rate[variant.label]:.0f} | {rate[variant.label] / base_a:.2f} | "
            f"{rate[variant.label] / base_b:.2f} | {cosines.mean():.5f} | {cosines.min():.5f} | "
            f"{variant.cold_s:.2f} | {variant.load_s:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    print(header(), flush=True)
    tokenizer = Tokenizer.from_file(str(TOKENIZER))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    sentences = read_sentences(STSB_DEV, N_SENTENCES)
    batches = make_batches(tokenizer, sentences)
    warmup = make_batches(tokenizer, sentences[:WARMUP_SENTENCES])
    missing = [str(path) for path in MODELS.values() if not path.exists()]
    if missing:
        sys.exit(f"missing {missing}: run `make artifact` and bench/quant_variants.py (see the docstring)")
    variants = build_variants()
    for variant in variants:
        variant.open()
        embed(variant.session, warmup)
        variant.cold_s = timed_pass(variant, batches)
        print(f"opened {variant.label}: cold pass {variant.cold_s:.2f} s", file=sys.stderr, flush=True)
    for round_index in range(ROUNDS):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.passes.append(timed_pass(variant, batches))
    reference = Variant(MODEL_FP32, CPU_EP).label
    print(table(variants, next(variant.vectors for variant in variants if variant.label == reference)))


if __name__ == "__main__":
    main()
