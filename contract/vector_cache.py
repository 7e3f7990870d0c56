"""The content-addressed vector cache in Redis, as both producers and workers use it."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from contract import keys
from contract.codec import Matrix, encode_vector


class VectorCache:
    """Vectors under `emb:<fingerprint>:<digest>`, plus the set of digests whose text was cut."""

    def __init__(self, client: redis.Redis, ttl_s: int, fetch_batch_size: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.fetch_batch_size = fetch_batch_size

    def touch(self, fingerprint: str, digests: Sequence[str]) -> list[bool]:
        """Which vectors exist. EXPIRE answers that and keeps each hit alive, in one command."""
        pipe = self.redis.pipeline(transaction=False)
        for digest in digests:
            pipe.expire(keys.vector_key(fingerprint, digest), self.ttl_s)
        return [bool(found) for found in pipe.execute()]

    def truncated(self, fingerprint: str, digests: Sequence[str]) -> list[bool]:
        if not digests:
            return []
        found = self.redis.smismember(keys.truncated_set_key(fingerprint), list(digests))
        return [bool(flag) for flag in found]

    def write(
        self, fingerprint: str, digests: Sequence[str], vectors: Matrix, truncated: Sequence[bool]
    ) -> None:
        """Plain SETs of the same bytes: idempotent when a chunk runs twice."""
        pipe = self.redis.pipeline(transaction=False)
        for digest, vector in zip(digests, vectors, strict=True):
            pipe.set(keys.vector_key(fingerprint, digest), encode_vector(vector), ex=self.ttl_s)
        cut = [digest for digest, flag in zip(digests, truncated, strict=True) if flag]
        if cut:
            pipe.sadd(keys.truncated_set_key(fingerprint), *cut)
            pipe.expire(keys.truncated_set_key(fingerprint), self.ttl_s)
        pipe.execute()

    def fetch(self, fingerprint: str, digests: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = []
        for start in range(0, len(digests), self.fetch_batch_size):
            batch = digests[start : start + self.fetch_batch_size]
            found = self.redis.mget([keys.vector_key(fingerprint, d) for d in batch])
            values.extend(
                value if isinstance(value, bytes) or value is None else value.encode() for value in found
            )
        return values
