"""The Celery application: `celery -A worker worker` serves, `celery -A worker flower` watches."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import worker_init, worker_process_init

from contract import keys
from contract.celery_config import make_celery
from contract.manifest import load_manifest
from contract.settings import get_settings

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings, main="worker")
app.conf.include = ["worker.tasks"]


@worker_init.connect
def advertise_model(**_: Any) -> None:
    """Check the artifact before forking and tell producers which fingerprint this fleet serves."""
    manifest = load_manifest(settings.model_dir)
    client = redis.Redis.from_url(settings.cache_url)
    client.hset(
        keys.model_advert_key(settings.model_name),
        mapping={"fingerprint": manifest.fingerprint, "dims": manifest.dims, "name": manifest.name},
    )
    log.info("serving %s as %s on queue %s", manifest.name, manifest.fingerprint, settings.queue)


@worker_process_init.connect
def open_engine(**_: Any) -> None:
    from worker.runtime import open_runtime

    open_runtime(settings)
