from pathlib import Path

import pytest

from producer.errors import InvalidTextError, JobTooLargeError
from producer.inputs import read_texts
from producer.planning import chunk_ranges, plan_job, validate_texts


def test_identical_texts_are_planned_once_with_their_count() -> None:
    plan = plan_job(["a", "b", "a", "a"], "fp")
    assert plan.unique_texts == ["a", "b"] and plan.positions == [[0, 2, 3], [1]]
    assert plan.digests[0] == plan.digests[2] == plan.unique_digests[0]


def test_validation_names_the_bad_position_and_the_limit() -> None:
    with pytest.raises(InvalidTextError, match="position 1 is NoneType"):
        validate_texts(["ok", None], 10)
    with pytest.raises(InvalidTextError, match="not valid Unicode"):
        validate_texts(["ok", "bad \udcff"], 10)
    with pytest.raises(JobTooLargeError, match="limit of 2"):
        validate_texts(["a", "b", "c"], 2)
    with pytest.raises(InvalidTextError, match="not one string"):
        validate_texts("a single string", 10)


def test_chunk_ranges_cover_everything_once_in_order_and_never_over_the_size() -> None:
    for total in range(0, 700, 7):
        for size, smallest in ((256, 64), (64, 64), (2, 1), (100, 8)):
            spans = chunk_ranges(total, size, smallest)
            assert [i for span in spans for i in span] == list(range(total))
            assert all(0 < len(span) <= size for span in spans)


def test_a_job_of_several_chunks_ends_in_halving_ones() -> None:
    assert [len(span) for span in chunk_ranges(10_000, 256, 64)] == [256] * 38 + [136, 68, 68]
    assert [len(span) for span in chunk_ranges(200, 256, 64)] == [200]
    assert [len(span) for span in chunk_ranges(5, 2, 1)] == [2, 2, 1]


def test_read_texts_lines_and_jsonl(tmp_path: Path) -> None:
    lines = tmp_path / "t.txt"
    lines.write_text("one\n\nthree\n")
    assert read_texts(lines) == ["one", "", "three"]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "x"}\n\n{"text": "y", "id": 2}\n')
    assert read_texts(jsonl) == ["x", "y"]
    jsonl.write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(InvalidTextError, match=r"line 2 .* no string field 'text'"):
        read_texts(jsonl)


def test_chunks_are_split_where_a_payload_would_be_too_large() -> None:
    from producer.planning import chunk_payloads, clip_texts

    texts = clip_texts(["x" * 500, "y" * 20, "z" * 500, "w"], 300)
    assert [len(text) for text in texts] == [300, 20, 300, 1]
    plan = plan_job(texts, "fp")
    whole = chunk_payloads(plan, [0, 1, 2, 3], size=4, smallest=4, max_bytes=10_000)
    assert len(whole) == 1
    split = chunk_payloads(plan, [0, 1, 2, 3], size=4, smallest=4, max_bytes=400)
    assert len(split) >= 2 and all(len(payload) <= 400 for payload in split)
    with pytest.raises(JobTooLargeError, match=r"position 0 takes .* over EMBED_MAX_PAYLOAD_BYTES"):
        chunk_payloads(plan, [0, 1, 2, 3], size=4, smallest=4, max_bytes=200)
