"""The artifact manifest: written by `modelbuild`, checked by every consumer before use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.cpu_features import has_int8_dot

MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
HASH_BLOCK_BYTES = 1 << 20
FINGERPRINT_HEX_CHARS = 16  # 64 bits of sha256: queue names stay short, collisions stay out of reach

QuantFormat = Literal["static-int8", "dynamic-int8", "fp32", "fp16"]
OptLevel = Literal["all", "extended", "basic", "disable"]


class ArtifactError(RuntimeError):
    """The model artifact is missing, malformed or altered; the message says what to run."""


class Quantization(BaseModel):
    format: QuantFormat
    settings: dict[str, Any] = Field(default_factory=dict)


class OrtSession(BaseModel):
    """Session settings the artifact needs to run as built (see DESIGN.md, the contract)."""

    graph_optimization_level: OptLevel = "all"
    disabled_optimizers: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    dims: int = Field(gt=0)
    max_seq_length: int = Field(gt=0)
    pooling: Literal["mean"]
    normalize: bool
    quantization: Quantization
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tokenizer_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source: str
    accuracy: dict[str, float] = Field(default_factory=dict)
    ort_session: OrtSession = Field(default_factory=OrtSession)

    @property
    def fingerprint(self) -> str:
        """Everything that changes a vector: weights, tokenizer, pooling, normalisation, length."""
        parts = [
            self.sha256,
            self.tokenizer_sha256,
            self.pooling,
            str(self.normalize),
            str(self.max_seq_length),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:FINGERPRINT_HEX_CHARS]

    def serving_fingerprint(self, cpu_flags: Iterable[str]) -> str:
        """The fingerprint a worker on this CPU serves: for int8 builds it adds the kernel path.

        ONNX Runtime's int8 kernels accumulate differently with and without VNNI/AMX
        (contract.cpu_features), so vectors of the same artifact differ slightly between the two
        kinds of host; a mixed fleet keeps them apart in the cache and in the queues.
        """
        if not self.quantization.format.endswith("int8"):
            return self.fingerprint
        kernel = "int8-dot" if has_int8_dot(cpu_flags) else "no-int8-dot"
        return hashlib.sha256(f"{self.fingerprint}|{kernel}".encode()).hexdigest()[:FINGERPRINT_HEX_CHARS]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


BUILD_HINT = "build it with `python -m modelbuild build --out {dir}` (or `make artifact`)"


def load_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read and check an artifact directory; raise ArtifactError saying what to run."""
    model_dir = Path(model_dir)
    hint = BUILD_HINT.format(dir=model_dir)
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"no model artifact at {model_dir} ({MANIFEST_FILE} missing): {hint}")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as exc:
        raise ArtifactError(f"malformed {path}: {exc}; rebuild: {hint}") from exc
    if verify:
        _verify_file(model_dir / manifest.file, manifest.sha256, hint)
        _verify_file(model_dir / TOKENIZER_FILE, manifest.tokenizer_sha256, hint)
    return manifest


def _verify_file(path: Path, expected: str, hint: str) -> None:
    if not path.is_file():
        raise ArtifactError(f"{path} named by the manifest is missing: {hint}")
    actual = sha256_of(path)
    if actual != expected:
        raise ArtifactError(
            f"{path} fails its manifest check (sha256 {actual[:12]}..., "
            f"manifest says {expected[:12]}...): the file is corrupt or was replaced; {hint}"
        )


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path
