"""What the scripts that time ONNX files of the model share: their options and the dev sentences.

Any ONNX file runs through the serving encoder with the artifact's tokenizer and ORT session
settings, one process, batches cut by count (quant_variants.settings_for), as the tables in
docs/ are timed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from peers import REPO_ROOT
from quant_variants import settings_for

from contract.manifest import TOKENIZER_FILE, Manifest, load_manifest
from contract.settings import FleetSettings
from modelbuild.accuracy import read_stsb
from worker.engine import SentenceEncoder

DEFAULT_STSB = REPO_ROOT.parent / "shared" / "data" / "stsb" / "stsb-en-dev.csv"
DEFAULT_ARTIFACT = REPO_ROOT / "artifacts" / "all-MiniLM-L6-v2"


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--stsb", type=Path, default=DEFAULT_STSB)
    parser.add_argument(
        "--artifact", type=Path, default=DEFAULT_ARTIFACT, help="tokenizer and ORT session settings"
    )


@dataclass(frozen=True)
class EncoderSetup:
    manifest: Manifest
    settings: FleetSettings
    artifact: Path
    stsb: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EncoderSetup:
        settings = settings_for(args.threads, args.batch_size)
        return cls(load_manifest(args.artifact), settings, args.artifact, args.stsb)

    @property
    def tokenizer_file(self) -> Path:
        return self.artifact / TOKENIZER_FILE

    def sentences(self, count: int) -> list[str]:
        """The first `count` unique STS-B dev sentences."""
        return read_stsb(self.stsb).unique_sentences()[:count]

    def open(self, model: Path) -> SentenceEncoder:
        manifest = self.manifest
        return SentenceEncoder.open(
            model,
            self.tokenizer_file,
            manifest.max_seq_length,
            manifest.normalize,
            manifest.ort_session,
            self.settings,
        )
