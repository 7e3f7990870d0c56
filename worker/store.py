"""The worker's side of job bookkeeping: attempt counts, last errors, exactly-once progress."""

from __future__ import annotations

import time
from importlib import resources

import redis

from contract import keys
from contract.jobs import ChunkMessage

COMPLETE_SCRIPT = resources.files("worker").joinpath("lua/complete_chunk.lua").read_text()
ERROR_FIELD = "error:{chunk}"


class JobProgress:
    def __init__(self, client: redis.Redis, job_ttl_s: int) -> None:
        self.redis = client
        self.job_ttl_s = job_ttl_s
        self._complete = client.register_script(COMPLETE_SCRIPT)

    def record_attempt(self, message: ChunkMessage) -> int:
        """Count deliveries in Redis: a chunk that kills its process is redelivered without an error."""
        key = keys.job_attempts_key(message.job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(key, str(message.chunk), 1)
        pipe.expire(key, self.job_ttl_s)
        attempts, _ = pipe.execute()
        return int(attempts)

    def record_error(self, message: ChunkMessage, error: str) -> None:
        field = ERROR_FIELD.format(chunk=message.chunk)
        self.redis.hset(keys.job_attempts_key(message.job_id), field, error)

    def last_error(self, message: ChunkMessage) -> str:
        field = ERROR_FIELD.format(chunk=message.chunk)
        raw = self.redis.hget(keys.job_attempts_key(message.job_id), field)
        return raw.decode() if isinstance(raw, bytes) else (raw or "")

    def complete(self, message: ChunkMessage, truncated_positions: int, error: str = "") -> int:
        """Count the chunk once (done or failed) and announce progress; see complete_chunk.lua."""
        return int(
            self._complete(
                keys=[keys.job_key(message.job_id), keys.job_chunks_done_key(message.job_id)],
                args=[
                    message.chunk,
                    message.positions(),
                    truncated_positions,
                    "failed" if error else "done",
                    error,
                    f"{time.time():.3f}",
                    keys.job_channel(message.job_id),
                    self.job_ttl_s,
                ],
            )
        )
