"""Pure submit-time logic: validate texts, address them by content, dedupe, cut into chunks."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from contract.digest import digest_for
from contract.jobs import ChunkPayload
from producer.errors import InvalidTextError, JobTooLargeError


def validate_texts(texts: Sequence[object], max_job_texts: int) -> list[str]:
    """Refuse the whole job before anything is queued, naming the first bad position."""
    if isinstance(texts, str):
        raise InvalidTextError("texts must be a list of strings, not one string: wrap it in [...]")
    if not isinstance(texts, (list, tuple)):
        hint = (
            "pass list(...) of it"
            if isinstance(texts, Iterable) and not isinstance(texts, Mapping)
            else "pass a list"
        )
        raise InvalidTextError(f"texts must be a list of strings, not {type(texts).__name__}: {hint}")
    if len(texts) > max_job_texts:
        raise JobTooLargeError(
            f"job has {len(texts)} texts, over the limit of {max_job_texts} "
            "(EMBED_MAX_JOB_TEXTS): split it into several jobs"
        )
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidTextError(
                f"text at position {position} is {type(text).__name__}, not str: "
                "convert or drop it and resubmit"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidTextError(
                f"text at position {position} is not valid Unicode ({exc.reason} at "
                f"character {exc.start}): fix its encoding and resubmit"
            ) from exc
    return list(texts)


@dataclass
class JobPlan:
    """Digests in input order, and each distinct text once with the input positions it fills."""

    digests: list[str]
    unique_digests: list[str] = field(default_factory=list)
    unique_texts: list[str] = field(default_factory=list)
    positions: list[list[int]] = field(default_factory=list)

    def count(self, unique: int) -> int:
        return len(self.positions[unique])


def plan_job(texts: Sequence[str], fingerprint: str) -> JobPlan:
    plan = JobPlan(digests=[digest_for(fingerprint, text) for text in texts])
    slot: dict[str, int] = {}
    for position, (text, digest) in enumerate(zip(texts, plan.digests, strict=True)):
        if digest in slot:
            plan.positions[slot[digest]].append(position)
            continue
        slot[digest] = len(plan.unique_digests)
        plan.unique_digests.append(digest)
        plan.unique_texts.append(text)
        plan.positions.append([position])
    return plan


def chunk_ranges(total: int, size: int, smallest: int) -> list[range]:
    """Chunks of `size`, except that a job of several ends in halving chunks, down to about `smallest`.

    Processes take a job's chunks as they free up, so at its end one may still run a last chunk
    while the others idle. Halving the last chunks (as OpenMP's guided schedule does) bounds that
    wait by a chunk of about `smallest` texts, at a few more tasks per job.
    """
    if total <= size:
        return [range(0, total)] if total else []
    sizes = [size] * (total // size - 1)
    rest = total - len(sizes) * size  # from size to 2 x size - 1 texts
    while rest > size or rest > 2 * smallest:
        sizes.append((rest + 1) // 2)
        rest -= sizes[-1]
    sizes.append(rest)
    ends = list(itertools.accumulate(sizes))
    return [range(end - length, end) for end, length in zip(ends, sizes, strict=True)]


def clip_texts(texts: list[str], max_chars: int) -> list[str]:
    """Keep the first EMBED_MAX_TEXT_CHARS of each text before anything is queued: the model reads
    a few hundred tokens, and a message need not carry megabytes it will never read. Workers
    count a text of that length as truncated."""
    return [text if len(text) <= max_chars else text[:max_chars] for text in texts]


def chunk_payloads(
    plan: JobPlan, members: list[int], size: int, smallest: int, max_bytes: int
) -> list[tuple[str, int]]:
    """Chunk payloads (JSON) of the given distinct texts, with how many texts each holds: `size` texts
    each at most, split in halves where one would be over `max_bytes`; a single text over it refuses
    the job."""
    payloads: list[tuple[str, int]] = []
    for span in chunk_ranges(len(members), size, smallest):
        payloads.extend(_fitting(plan, [members[i] for i in span], max_bytes))
    return payloads


def _fitting(plan: JobPlan, members: list[int], max_bytes: int) -> list[tuple[str, int]]:
    payload = ChunkPayload(
        texts=[plan.unique_texts[i] for i in members], positions=[plan.positions[i] for i in members]
    ).model_dump_json()
    size = len(payload.encode())
    if size <= max_bytes:
        return [(payload, len(members))]
    if len(members) == 1:
        position = plan.positions[members[0]][0]
        raise JobTooLargeError(
            f"the text at position {position} takes {size:,} bytes in a message, over "
            f"EMBED_MAX_PAYLOAD_BYTES ({max_bytes:,}): lower EMBED_MAX_TEXT_CHARS or split the text"
        )
    half = len(members) // 2
    return _fitting(plan, members[:half], max_bytes) + _fitting(plan, members[half:], max_bytes)
