"""The content-addressed vector cache in Redis, as both producers and workers use it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis
from redis.client import Pipeline

from contract import keys
from contract.codec import Matrix, encode_vector
from contract.lua_scripts import load_lua
from contract.redis_connection import as_bytes


class VectorCache:
    """Vectors under `emb:<fingerprint>:<digest>`, plus the set of digests whose text was cut."""

    def __init__(self, client: redis.Redis, ttl_s: int, fetch_batch_size: int) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.fetch_batch_size = fetch_batch_size

    def look(self, fingerprint: str, digests: Sequence[str]) -> tuple[list[bool], list[bool]]:
        """Which vectors exist (their TTL renewed) and which texts were cut, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_look(pipe, fingerprint, digests)
        return self.read_look(pipe.execute(), len(digests))

    def queue_look(self, pipe: Pipeline, fingerprint: str, digests: Sequence[str]) -> None:
        """Add to `pipe`: touch_vectors.lua per batch of keys (whether each vector exists, keeping a hit
        alive; batches keep Redis free for others between them), then one SMISMEMBER of the truncated
        set; `read_look` reads the replies."""
        script = load_lua("touch_vectors")
        for start in range(0, len(digests), self.fetch_batch_size):
            batch = [keys.vector_key(fingerprint, d) for d in digests[start : start + self.fetch_batch_size]]
            pipe.eval(script, len(batch), *batch, self.ttl_s)
        if digests:
            pipe.smismember(keys.truncated_set_key(fingerprint), list(digests))

    def _look_replies(self, count: int) -> int:
        """How many pipeline replies `queue_look` adds for `count` digests."""
        return -(-count // self.fetch_batch_size) + 1 if count else 0

    def read_look(self, replies: Sequence[object], count: int) -> tuple[list[bool], list[bool]]:
        """(exists, truncated) from the last replies of a pipeline that `queue_look` added to."""
        if not count:
            return [], []
        tail = list(replies[-self._look_replies(count) :])
        found = b"".join(as_bytes(flags) for flags in tail[:-1])
        cut = cast(list[object], tail[-1])
        return [flag == ord("1") for flag in found], [bool(flag) for flag in cut]

    def write(
        self, fingerprint: str, digests: Sequence[str], vectors: Matrix, truncated: Sequence[bool]
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self.queue_write(pipe, fingerprint, digests, [encode_vector(vector) for vector in vectors], truncated)
        pipe.execute()

    def queue_write(
        self,
        pipe: Pipeline,
        fingerprint: str,
        digests: Sequence[str],
        encoded: Sequence[bytes],
        truncated: Sequence[bool],
    ) -> None:
        """store_vectors.lua per batch of keys: the same bytes each time, so a chunk may run twice.

        `encoded`: the vectors as contract.codec encodes them (the caller may announce them too)."""
        script = load_lua("store_vectors")
        for start in range(0, len(digests), self.fetch_batch_size):
            batch = digests[start : start + self.fetch_batch_size]
            names = [keys.vector_key(fingerprint, digest) for digest in batch]
            pipe.eval(script, len(names), *names, self.ttl_s, *encoded[start : start + self.fetch_batch_size])
        cut = [digest for digest, flag in zip(digests, truncated, strict=True) if flag]
        if cut:
            pipe.sadd(keys.truncated_set_key(fingerprint), *cut)
            pipe.expire(keys.truncated_set_key(fingerprint), self.ttl_s)

    def fetch(self, fingerprint: str, digests: Sequence[str]) -> list[bytes | None]:
        values: list[bytes | None] = []
        for start in range(0, len(digests), self.fetch_batch_size):
            batch = digests[start : start + self.fetch_batch_size]
            found = self.redis.mget([keys.vector_key(fingerprint, d) for d in batch])
            values.extend(
                value if isinstance(value, bytes) or value is None else value.encode() for value in found
            )
        return values
