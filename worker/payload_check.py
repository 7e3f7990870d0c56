"""The worker trusts no producer: a chunk's payload must be well formed and match its job.

Pure checks, no I/O: the runner fetches what they compare. A payload that fails one is counted
failed with the reason and never retried; retrying cannot make it right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from contract.jobs import ChunkPayload, describe_positions


class PayloadRejected(ValueError):
    """The chunk's payload is malformed, oversized, or does not match its job."""


def parse_payload(raw: bytes, max_bytes: int) -> ChunkPayload:
    if len(raw) > max_bytes:
        raise PayloadRejected(
            f"payload of {len(raw):,} bytes is over EMBED_MAX_PAYLOAD_BYTES ({max_bytes:,})"
        )
    try:
        return ChunkPayload.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PayloadRejected(f"malformed payload ({where}: {first['msg']})") from exc


def check_positions(payload: ChunkPayload, total: int) -> list[int]:
    """The payload's input positions, each inside the job and named once; sorted."""
    positions = payload.flat_positions()
    outside = [position for position in positions if not 0 <= position < total]
    if outside:
        raise PayloadRejected(f"positions {describe_positions(outside)} are outside the job's {total} inputs")
    if len(set(positions)) != len(positions):
        raise PayloadRejected("an input position is named twice")
    return positions


def mismatched_positions(
    payload: ChunkPayload, digests: Sequence[str], stored: Mapping[int, bytes]
) -> list[int]:
    """Positions whose digest in the job differs from the digest of the text claiming them."""
    return sorted(
        position
        for digest, places in zip(digests, payload.positions, strict=True)
        for position in places
        if stored.get(position) != bytes.fromhex(digest)
    )
