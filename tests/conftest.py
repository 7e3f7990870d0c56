"""Shared fixtures: the artifacts under test, built on first use if `make artifact` has not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = Path(os.environ.get("EMBED_MODEL_DIR", ROOT / "artifacts" / "all-MiniLM-L6-v2"))
FP32_DIR = ROOT / "artifacts" / "all-MiniLM-L6-v2-fp32"

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The stock market fell sharply on Monday.",
    "Two dogs are running through a snowy field.",
    "How do I reset my password?",
    "",
    "Quantum computers use qubits instead of bits.",
    "The cat sat on the mat.",
]


def ensure_artifact(directory: Path, quant: str) -> Path:
    if not (directory / "manifest.json").is_file():
        command = [sys.executable, "-m", "modelbuild", "build", "--out", str(directory), "--quant", quant]
        subprocess.run(command, check=True, cwd=ROOT)
    return directory


@pytest.fixture(scope="session")
def static_artifact() -> Path:
    return ensure_artifact(STATIC_DIR, "static-int8")


@pytest.fixture(scope="session")
def fp32_artifact() -> Path:
    return ensure_artifact(FP32_DIR, "fp32")
