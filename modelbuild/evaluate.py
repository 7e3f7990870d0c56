"""`eval`: STS-B Spearman of a built artifact, served exactly as a worker serves it."""

from __future__ import annotations

from pathlib import Path

from contract.settings import FleetSettings
from modelbuild.accuracy import read_stsb, stsb_spearman
from worker.engine import EmbeddingEngine


def evaluate(artifact_dir: Path, stsb_csv: Path, threads: int) -> float:
    """Spearman x100; the engine checks the manifest and file hashes first."""
    engine = EmbeddingEngine(artifact_dir, FleetSettings(intra_op_threads=threads, worker_concurrency=1))
    return stsb_spearman(engine, read_stsb(stsb_csv))
