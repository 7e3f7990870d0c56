"""The job protocol's pure parts: payload checks, outcomes, chunk references, lanes, build choice."""

from __future__ import annotations

import json

import pytest

from contract.digest import digest_for
from contract.fleet_registry import BuildAdvert
from contract.jobs import (
    ChunkPayload,
    ChunkRef,
    JobRecord,
    JobState,
    describe_positions,
    pack_positions,
    unpack_positions,
)
from contract.lanes import Lane, build_queues, lane_for, queue_name, sibling_queue
from contract.redis_connection import mask_url, retries_for
from producer.submission import pick_build
from worker.chunk_runner import chunk_outcome
from worker.payload_check import PayloadRejected, check_positions, mismatched_positions, parse_payload

MAX = 1 << 20


def payload(texts: list[str], positions: list[list[int]]) -> bytes:
    return json.dumps({"texts": texts, "positions": positions}).encode()


def test_a_well_formed_payload_parses() -> None:
    parsed = parse_payload(payload(["a", "b"], [[0, 2], [1]]), MAX)
    assert parsed.texts == ["a", "b"] and parsed.flat_positions() == [0, 1, 2]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (payload(["a"], [[0], [1]]), "1 texts but 2 position lists"),
        (payload([], []), "texts"),
        (payload(["a"], [[]]), "a text with no input position"),
        (json.dumps({"texts": [1], "positions": [[0]]}).encode(), "texts.0"),
        (json.dumps({"texts": ["a"], "positions": [["0"]]}).encode(), "positions.0.0"),
        (json.dumps({"texts": ["a"], "positions": [[0]], "extra": 1}).encode(), "extra"),
        (b"not json", "malformed payload"),
    ],
)
def test_a_malformed_payload_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadRejected, match=reason):
        parse_payload(raw, MAX)


def test_an_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadRejected, match="over EMBED_MAX_PAYLOAD_BYTES"):
        parse_payload(payload(["x" * 100], [[0]]), 50)


def test_positions_must_lie_inside_the_job_and_be_named_once() -> None:
    assert check_positions(ChunkPayload(texts=["a", "b"], positions=[[3], [0, 1]]), 4) == [0, 1, 3]
    with pytest.raises(PayloadRejected, match="positions 4 are outside the job's 4 inputs"):
        check_positions(ChunkPayload(texts=["a"], positions=[[4]]), 4)
    with pytest.raises(PayloadRejected, match="outside"):
        check_positions(ChunkPayload(texts=["a"], positions=[[-1]]), 4)
    with pytest.raises(PayloadRejected, match="named twice"):
        check_positions(ChunkPayload(texts=["a", "b"], positions=[[1], [1]]), 4)


def test_a_text_that_does_not_match_its_positions_digest_is_found() -> None:
    chunk = ChunkPayload(texts=["honest", "forged"], positions=[[0], [1, 2]])
    digests = [digest_for("fp", text) for text in chunk.texts]
    stored = {
        0: bytes.fromhex(digests[0]),
        1: bytes.fromhex(digests[1]),
        2: bytes.fromhex(digest_for("fp", "x")),
    }
    assert mismatched_positions(chunk, digests, stored) == [2]


def test_chunk_outcome_splits_done_and_failed_positions() -> None:
    chunk = ChunkPayload(texts=["a", "b", "c"], positions=[[0, 5], [1], [2]])
    whole = chunk_outcome(chunk, [True, False, False], {})
    assert (whole.done, whole.failed, whole.truncated, whole.error) == (4, 0, 2, "")
    part = chunk_outcome(chunk, [False, False, True], {0: "killed the worker process that embedded it"})
    assert (part.done, part.failed, part.truncated) == (2, 2, 1)
    assert part.error == "inputs 0, 5 failed: killed the worker process that embedded it"
    assert unpack_positions(part.failed_positions) == [0, 5]


def test_chunk_reference_round_trips_and_refuses_anything_else() -> None:
    ref = ChunkRef("abc", 3)
    assert ChunkRef.from_kwargs(ref.to_kwargs()) == ref and ref.task_id == "abc.3"
    for bad in ({}, {"job_id": 1, "chunk": 0}, {"job_id": "a", "chunk": "0"}, {"job_id": "a", "chunk": -1}):
        with pytest.raises(ValueError, match="not a chunk reference"):
            ChunkRef.from_kwargs(bad)


def test_positions_pack_and_describe() -> None:
    assert unpack_positions(pack_positions([5, 1, 5, 3])) == [1, 3, 5]
    assert describe_positions(list(range(12)), shown=3) == "0, 1, 2 and 9 more"
    assert describe_positions([7]) == "7"


def test_job_record_keeps_lane_and_state() -> None:
    record = JobRecord("j", 2, "fp", 384, model="m", lane=Lane.INTERACTIVE, state=JobState.CANCELLED)
    raw = {str(k).encode(): str(v).encode() for k, v in record.to_redis().items()}
    assert JobRecord.from_redis(raw) == record and record.state.finished


def test_lanes_name_queues_per_build_interactive_first() -> None:
    assert queue_name("m", "fp", Lane.BULK) == "embed.m.fp.bulk"
    assert build_queues("m", "fp") == ["embed.m.fp.interactive", "embed.m.fp.bulk"]
    assert lane_for(64, 64) is Lane.INTERACTIVE and lane_for(65, 64) is Lane.BULK
    assert (
        lane_for(1, 64, Lane.BULK) is Lane.BULK
        and lane_for(10_000, 64, Lane("interactive")) is Lane.INTERACTIVE
    )
    model, build = "all-MiniLM-L6-v2", "8a5de308744cdc46"
    bulk = queue_name(model, build, Lane.BULK)
    assert sibling_queue(bulk, Lane.INTERACTIVE) == queue_name(model, build, Lane.INTERACTIVE)


def test_new_jobs_go_to_the_newest_artifact() -> None:
    old = BuildAdvert("m", "old-vnni", "A", 384, since=100.0, nodes=5, processes=20)
    new = BuildAdvert("m", "new-vnni", "B", 384, since=200.0, nodes=1, processes=2)
    new_avx2 = BuildAdvert("m", "new-avx2", "B", 384, since=150.0, nodes=1, processes=2)
    picks = {pick_build([old, new, new_avx2]).fingerprint for _ in range(200)}
    assert picks == {"new-vnni", "new-avx2"}  # both hosts kinds of artifact B share its jobs
    assert pick_build([old]).fingerprint == "old-vnni"


def test_retries_span_the_outage_budget() -> None:
    assert retries_for(0) == 0
    assert 30 <= retries_for(30) <= 40 and retries_for(60) > retries_for(30)


def test_passwords_are_masked_in_urls() -> None:
    assert mask_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://user:s3cret@host/1") == "rediss://user:***@host/1"
    assert mask_url("redis://token@host") == "redis://***@host"
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_coalesced_rows_go_back_to_their_calls_and_a_failure_stays_with_its_call() -> None:
    import numpy as np

    from producer.coalescing import split_rows
    from producer.errors import JobFailedError

    vectors = np.ma.MaskedArray(np.arange(12, dtype=np.float32).reshape(6, 2), mask=np.zeros((6, 2), bool))
    vectors.mask[4] = True
    first, second, third = split_rows([1, 3, 2], vectors, "job")
    assert not isinstance(first, JobFailedError) and first.tolist() == [[0.0, 1.0]]
    assert not isinstance(second, JobFailedError) and second.shape == (3, 2)
    assert isinstance(third, JobFailedError) and third.positions == [0]
