"""The Celery configuration both sides share: JSON only, late acks, little prefetch, bounded timeouts."""

from __future__ import annotations

from typing import Any

from celery import Celery

from contract import broker_transport
from contract.jobs import ChunkRef
from contract.redis_connection import REDIS_SCHEMES, TLS_SCHEME, tls_options
from contract.settings import FleetSettings

EMBED_TASK = "embedfleet.embed_chunk"
SOFT_LIMIT_MARGIN_S = 10
SOFT_SHUTDOWN_S = 30
# A pool child opens and warms its ORT session before it reports up; on a busy host that takes more
# than Celery's 4 s, and a child killed for it is replaced by one that takes as long, forever.
PROCESS_START_TIMEOUT_S = 120
VISIBILITY_TO_TIME_LIMIT = 4


def send_chunk(app: Celery, ref: ChunkRef, queue: str) -> None:
    """Publish one chunk's task: its stable id, the summary monitoring shows, its size header."""
    app.send_task(EMBED_TASK, kwargs=ref.to_kwargs(), queue=queue, **ref.send_options())


def celery_config(settings: FleetSettings) -> dict[str, Any]:
    if settings.visibility_timeout_s < VISIBILITY_TO_TIME_LIMIT * settings.task_time_limit_s:
        raise ValueError(
            f"EMBED_VISIBILITY_TIMEOUT_S ({settings.visibility_timeout_s}) must be at least "
            f"{VISIBILITY_TO_TIME_LIMIT}x EMBED_TASK_TIME_LIMIT_S ({settings.task_time_limit_s}), "
            "or Redis redelivers chunks that are still running"
        )
    tls = {"broker_use_ssl": tls_options(settings)} if settings.broker_url.startswith(TLS_SCHEME) else {}
    return {
        **tls,
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        "broker_connection_max_retries": None,
        # Pickle executes code on load: JSON everywhere, nothing else accepted.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Vectors go straight to Redis; Celery's result backend carries nothing.
        "result_backend": None,
        "task_ignore_result": True,
        # At-least-once: ack after the work, redeliver when a pool child dies or hits the hard
        # time limit (worker.requests counts both as a failed attempt). A task that raises was
        # already counted (done, failed, or sent back with Reject/retry), so its message may go.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure": True,
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "worker_soft_shutdown_timeout": SOFT_SHUTDOWN_S,
        "worker_proc_alive_timeout": PROCESS_START_TIMEOUT_S,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": max(1, settings.task_time_limit_s - SOFT_LIMIT_MARGIN_S),
        # Task events cost three publishes per chunk; Flower switches them on while it watches
        # (`celery -A worker worker -E` keeps them on).
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_concurrency": settings.processes(),
        "worker_hijack_root_logger": False,
    }


def transport_options(settings: FleetSettings) -> dict[str, Any]:
    """Redis: acks by visibility timeout, bounded socket waits, interactive lane polled first.
    RabbitMQ: publisher confirms, so a publish the broker did not take raises at the producer."""
    if not settings.broker_url.startswith(REDIS_SCHEMES):
        return {"confirm_publish": True}
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": settings.redis_health_check_interval_s,
        "retry_on_timeout": True,
        # BRPOP polls the queues in the order the worker lists them: interactive before bulk.
        "queue_order_strategy": "priority",
    }


def make_celery(settings: FleetSettings, main: str = "embedfleet") -> Celery:
    broker_transport.install()
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app
