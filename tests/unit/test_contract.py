"""Digests, codec, job records and settings: what producers and workers must agree on."""

import json

import numpy as np
import pytest

from contract.celery_config import celery_config
from contract.codec import VectorCodecError, decode_vectors, encode_vector
from contract.digest import digest_for
from contract.jobs import JobRecord, JobState, ended_record, pack_carried, pack_digests, unpack_digests
from contract.settings import FleetSettings, usable_cpus


def test_digest_depends_on_text_and_fingerprint() -> None:
    assert digest_for("fp1", "hello") == digest_for("fp1", "hello")
    assert digest_for("fp1", "hello") != digest_for("fp2", "hello")
    assert digest_for("fp1", "hello") != digest_for("fp1", "hello ")
    assert digest_for("fp1", "") != digest_for("fp1", " ")


def test_vectors_round_trip_as_float32_bytes() -> None:
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    blobs = [encode_vector(row) for row in vectors]
    assert all(len(blob) == 32 for blob in blobs)
    np.testing.assert_array_equal(decode_vectors(blobs, 8), vectors)


def test_a_vector_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(VectorCodecError, match="vector 1 has 16 bytes, expected 32"):
        decode_vectors([b"\0" * 32, b"\0" * 16], 8)


def test_job_record_round_trips_through_a_redis_hash() -> None:
    record = JobRecord(
        id="j", total=5, fingerprint="fp", dims=384, done=3, state=JobState.FAILED, error="boom", created=1.5
    )
    raw = {key.encode(): str(value).encode() for key, value in record.to_redis().items()}  # type: ignore[union-attr]
    assert JobRecord.from_redis(raw) == record


def test_an_ended_jobs_announcement_carries_its_record_and_a_progress_count_does_not() -> None:
    record = JobRecord(
        id="j", total=2, fingerprint="fp", dims=384, chunks=1, counted=1, done=2, state=JobState.DONE
    )
    pairs = [item for key, value in record.to_redis().items() for item in (str(key), str(value))]
    assert ended_record(json.dumps(pairs).encode()) == record  # what cjson.encode(HGETALL) publishes
    queued = JobRecord(id="j", total=2, fingerprint="fp", dims=384).to_redis()
    assert ended_record(json.dumps([str(item) for pair in queued.items() for item in pair])) is None
    assert ended_record(b"3") is None  # a progress count
    assert ended_record(b'["id", "j", "state"]') is None
    assert ended_record(b'["state", "done"]') is None  # not a whole record
    assert ended_record(b"{not json") is None


def test_an_ended_record_announced_to_its_waiter_carries_its_vectors() -> None:
    record = JobRecord(
        id="j", total=2, fingerprint="fp", dims=8, chunks=1, counted=1, done=2, state=JobState.DONE
    )
    pairs = [item for key, value in record.to_redis().items() for item in (str(key), str(value))]
    digests = [digest_for("fp", text) for text in ["a", "b"]]
    vectors = [encode_vector(np.full(8, value, dtype=np.float32)) for value in (1.0, 2.0)]
    heard = ended_record(json.dumps(pairs).encode() + b"\n" + pack_carried(digests, vectors))
    assert heard == record and heard is not None
    assert heard.carried == dict(zip(digests, vectors, strict=True))
    assert "carried" not in record.to_redis()
    torn = ended_record(json.dumps(pairs).encode() + b"\n" + pack_carried(digests, vectors)[:-1])
    assert torn is not None and torn.carried == {}  # the waiter reads the cache instead


def test_digests_pack_in_order() -> None:
    digests = [digest_for("fp", text) for text in ["a", "b", "a"]]
    assert unpack_digests(pack_digests(digests)) == digests


def test_cache_url_defaults_to_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_BROKER_URL", "redis://broker:6379/1")
    assert FleetSettings().cache_url == "redis://broker:6379/1"
    monkeypatch.setenv("EMBED_CACHE_URL", "redis://cache:6379/0")
    assert FleetSettings().cache_url == "redis://cache:6379/0"


def test_processes_times_threads_never_exceed_the_cpus() -> None:
    for processes in (1, 2, 3, 8):
        settings = FleetSettings(worker_concurrency=processes)
        assert settings.threads_per_process() * min(processes, usable_cpus()) <= max(usable_cpus(), processes)
        assert settings.threads_per_process() >= 1


def test_celery_config_refuses_pickle_and_a_short_visibility_timeout() -> None:
    config = celery_config(FleetSettings())
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        celery_config(FleetSettings(visibility_timeout_s=100, task_time_limit_s=300))


def test_a_drain_longer_than_half_the_time_limit_is_refused() -> None:
    assert FleetSettings(interactive_drain_s=150, task_time_limit_s=300).interactive_drain_s == 150
    with pytest.raises(ValueError, match="EMBED_INTERACTIVE_DRAIN_S"):
        FleetSettings(interactive_drain_s=151, task_time_limit_s=300)
