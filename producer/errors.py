"""Errors a producer can meet, each saying what to do next."""

from __future__ import annotations


class EmbedFleetError(Exception):
    """Base class for everything the client raises on purpose."""


class InvalidTextError(EmbedFleetError, ValueError):
    """An input is not a text the fleet can embed; the message names its position."""


class JobTooLargeError(EmbedFleetError, ValueError):
    """More texts than EMBED_MAX_JOB_TEXTS in one job."""


class JobNotFoundError(EmbedFleetError, KeyError):
    """No job record under that id: wrong id, another Redis, or expired after EMBED_JOB_TTL_S."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class JobLostError(EmbedFleetError):
    """The record of a job this client saw vanished (Redis restarted without persistence, or was
    flushed); `job.resume()` submits the same texts again."""


class JobFailedError(EmbedFleetError):
    """The job ended failed or cancelled; `positions` are the inputs left without vectors."""

    def __init__(self, message: str, positions: list[int] | None = None) -> None:
        super().__init__(message)
        self.positions = positions or []


class ResultIncompleteError(EmbedFleetError):
    """A finished job's vectors are gone from the cache (evicted or expired); `positions` says which."""

    def __init__(self, message: str, positions: list[int] | None = None) -> None:
        super().__init__(message)
        self.positions = positions or []


class JobTimeoutError(EmbedFleetError, TimeoutError):
    """wait() gave up; the job keeps running and can be re-attached with client.job(id)."""


class FleetUnavailableError(EmbedFleetError):
    """No live worker serves the model, or Redis cannot be reached: nothing was queued."""


class RedisUnavailableError(FleetUnavailableError):
    """Redis (broker or cache) cannot be reached; the message names it with its password masked."""
