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


class JobFailedError(EmbedFleetError):
    """A chunk of the job failed after its retries; the job record keeps the error."""


class JobTimeoutError(EmbedFleetError, TimeoutError):
    """wait() gave up; the job keeps running and can be re-attached with client.job(id)."""


class FleetUnavailableError(EmbedFleetError):
    """No worker has advertised the model yet, so the producer cannot compute cache keys."""
