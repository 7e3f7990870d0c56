"""The producer side: what applications import and run. Needs Redis, never the model runtime."""

from contract.lanes import Lane
from producer.client import EmbeddingClient
from producer.errors import (
    EmbedFleetError,
    FleetUnavailableError,
    InvalidTextError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    JobTimeoutError,
    JobTooLargeError,
    RedisUnavailableError,
    ResultIncompleteError,
)
from producer.job import Job

__all__ = [
    "EmbedFleetError",
    "EmbeddingClient",
    "FleetUnavailableError",
    "InvalidTextError",
    "Job",
    "JobFailedError",
    "JobLostError",
    "JobNotFoundError",
    "JobTimeoutError",
    "JobTooLargeError",
    "Lane",
    "RedisUnavailableError",
    "ResultIncompleteError",
]
