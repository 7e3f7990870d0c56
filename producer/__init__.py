"""The producer side: what applications import and run. Needs Redis, never the model runtime."""

from producer.client import EmbeddingClient
from producer.errors import (
    EmbedFleetError,
    FleetUnavailableError,
    InvalidTextError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    JobTooLargeError,
)
from producer.job import Job

__all__ = [
    "EmbedFleetError",
    "EmbeddingClient",
    "FleetUnavailableError",
    "InvalidTextError",
    "Job",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "JobTooLargeError",
]
