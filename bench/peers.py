"""The engines compared by bench/throughput.py, behind one small interface.

In-process variants wrap an `encode(texts) -> vectors` function (sentence-transformers PyTorch,
or the project's `EmbeddingEngine` over an ORT artifact); the OpenVINO peer is a subprocess in
its own venv (bench/openvino_peer.py) that times its own passes and hands vectors back as .npy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Encode = Callable[[list[str]], Matrix]

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
OPENVINO_PYTHON = BENCH_DIR / ".venv-openvino" / "bin" / "python"
OPENVINO_SCRIPT = BENCH_DIR / "openvino_peer.py"
MAX_TOKENS_PER_ROW = 512  # token budget = batch x this, so batches are cut by count alone
MANIFEST_FILE = "manifest.json"


class VariantUnavailable(RuntimeError):
    """This variant cannot run here; the message says why (the run goes on without it)."""


class Variant(Protocol):
    def timed_pass(self) -> float:
        """Seconds to embed the timed sentences once."""

    def embed(self, texts: list[str]) -> Matrix:
        """Vectors for `texts`, in order (untimed)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BenchSetup:
    """What every variant is built from: the same sentences, threads and batch size."""

    timed: list[str]
    threads: int
    batch_size: int
    source_dir: Path
    artifacts_dir: Path
    calibration: list[str]
    workdir: Path


@dataclass
class InProcess:
    encode: Encode
    timed: list[str]

    def warm_up(self) -> InProcess:
        self.encode(self.timed)
        return self

    def timed_pass(self) -> float:
        start = time.perf_counter()
        self.encode(self.timed)
        return time.perf_counter() - start

    def embed(self, texts: list[str]) -> Matrix:
        return self.encode(texts)

    def close(self) -> None:
        return None


def pytorch(setup: BenchSetup) -> InProcess:
    """sentence-transformers on PyTorch fp32: the reference every ratio is taken to."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(setup.threads)
    model = SentenceTransformer(str(setup.source_dir), device="cpu")

    def encode(texts: list[str]) -> Matrix:
        vectors = model.encode(texts, batch_size=setup.batch_size, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)

    return InProcess(encode, setup.timed).warm_up()


def ort_artifact(quant: str) -> Callable[[BenchSetup], InProcess]:
    """A factory for the project's EmbeddingEngine over the artifact built with `--quant quant`."""

    def build(setup: BenchSetup) -> InProcess:
        from contract.settings import FleetSettings
        from worker.engine import EmbeddingEngine

        settings = FleetSettings(
            intra_op_threads=setup.threads,
            max_batch_size=setup.batch_size,
            token_budget=setup.batch_size * MAX_TOKENS_PER_ROW,
        )
        engine = EmbeddingEngine(ensure_artifact(quant, setup.artifacts_dir), settings)
        return InProcess(lambda texts: engine.embed(texts).vectors, setup.timed).warm_up()

    return build


def ensure_artifact(quant: str, artifacts_dir: Path) -> Path:
    """DIR/QUANT, built with `python -m modelbuild build` when its manifest is missing."""
    out = artifacts_dir / quant
    if (out / MANIFEST_FILE).is_file():
        return out
    command = [sys.executable, "-m", "modelbuild", "build", "--quant", quant, "--out", str(out)]
    print(f"building {quant}: {' '.join(command)}", file=sys.stderr)
    result = subprocess.run(command, cwd=REPO_ROOT, check=False)
    if result.returncode != 0 or not (out / MANIFEST_FILE).is_file():
        raise VariantUnavailable(f"`{' '.join(command)}` failed (exit {result.returncode})")
    return out


@dataclass
class OpenVinoPeer:
    """The OpenVINO static int8 model in bench/.venv-openvino, driven over JSON lines."""

    process: subprocess.Popen[str]
    workdir: Path
    info: dict[str, Any] = field(default_factory=dict)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self.answer()

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise VariantUnavailable(f"{OPENVINO_SCRIPT.name} exited {code}; see its stderr above")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{OPENVINO_SCRIPT.name}: {reply['error']}")
        return reply

    def timed_pass(self) -> float:
        return float(self.request({"cmd": "pass"})["seconds"])

    def embed(self, texts: list[str]) -> Matrix:
        texts_path = self.workdir / "openvino-texts.json"
        vectors_path = self.workdir / "openvino-vectors.npy"
        texts_path.write_text(json.dumps(texts), encoding="utf-8")
        self.request({"cmd": "embed", "texts": str(texts_path), "out": str(vectors_path)})
        vectors: Matrix = np.load(vectors_path).astype(np.float32)
        return vectors

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()


def openvino(setup: BenchSetup) -> OpenVinoPeer:
    """Start the peer; on first use it exports and quantises the model (a few minutes)."""
    if not OPENVINO_PYTHON.is_file():
        raise VariantUnavailable(f"no {OPENVINO_PYTHON}: install it as bench/README.md says")
    timed_path = setup.workdir / "openvino-timed.json"
    timed_path.write_text(json.dumps(setup.timed), encoding="utf-8")
    calibration_path = setup.workdir / "openvino-calibration.txt"
    calibration_path.write_text("\n".join(setup.calibration) + "\n", encoding="utf-8")
    command = [
        str(OPENVINO_PYTHON),
        str(OPENVINO_SCRIPT),
        "--source",
        str(setup.source_dir),
        "--model-dir",
        str(setup.artifacts_dir / "openvino-static-int8"),
        "--calibration",
        str(calibration_path),
        "--timed",
        str(timed_path),
        "--threads",
        str(setup.threads),
        "--batch-size",
        str(setup.batch_size),
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    peer = OpenVinoPeer(process, setup.workdir)
    peer.info = peer.answer()
    return peer


@dataclass(frozen=True)
class VariantSpec:
    name: str
    label: str
    start: Callable[[BenchSetup], Variant]


REFERENCE = "pytorch-fp32"
VARIANTS = (
    VariantSpec(REFERENCE, "sentence-transformers, PyTorch fp32", pytorch),
    VariantSpec("ort-fp32", "ONNX Runtime fp32 (EmbeddingEngine)", ort_artifact("fp32")),
    VariantSpec(
        "ort-dynamic-int8",
        "ONNX Runtime dynamic int8 (EmbeddingEngine)",
        ort_artifact("dynamic-int8"),
    ),
    VariantSpec(
        "ort-static-int8",
        "ONNX Runtime static int8 (EmbeddingEngine, the product)",
        ort_artifact("static-int8"),
    ),
    VariantSpec("openvino-static-int8", "OpenVINO static int8 (NNCF via sentence-transformers)", openvino),
)
VARIANT_NAMES = tuple(spec.name for spec in VARIANTS)


def temporary_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="embedfleet-bench-")
