"""The Celery application: `celery -A worker worker` serves, `celery -A worker flower` watches.

A worker node checks its artifact before it forks or consumes anything, and exits non-zero when
the artifact is missing or fails its manifest check. Then it consumes its build's two lanes,
interactive first, and advertises the build while its consumer runs (worker.node).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from typing import Any, ClassVar

from celery import bootsteps
from celery.signals import celeryd_init, task_revoked, worker_process_init, worker_shutdown

from contract.celery_config import make_celery
from contract.cpu_features import cpu_flags
from contract.jobs import ChunkRef
from contract.lanes import build_queues
from contract.manifest import ArtifactError, load_manifest
from contract.settings import get_settings
from worker.node import WorkerNode, current_node, open_node

log = logging.getLogger(__name__)

EXIT_NO_ARTIFACT = 3
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _remove_metrics_dir(owner: int, directory: str) -> None:
    if os.getpid() == owner:  # the main process only: pool processes exit while it still serves
        shutil.rmtree(directory, ignore_errors=True)


settings = get_settings()
if settings.metrics_port:  # pool processes count into files that the main process adds up
    if METRICS_DIR_ENV not in os.environ:
        os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="embedfleet-metrics-")
        atexit.register(_remove_metrics_dir, os.getpid(), os.environ[METRICS_DIR_ENV])
    from prometheus_client import values

    # prometheus_client picks its value class when first imported, which Flower's `celery` CLI plugin
    # may have done before this module ran; pick again now that the directory is set.
    values.ValueClass = values.get_value_class()

app = make_celery(settings, main="worker")
app.conf.include = ["worker.tasks"]


@celeryd_init.connect
def check_artifact_and_pick_queues(sender: str, instance: Any, options: dict[str, Any], **_: Any) -> None:
    """Refuse to start without a sound artifact; consume only this build's lanes; size threads to `-c`."""
    global settings
    if options.get("concurrency"):  # `celery -A worker worker -c N` counts as EMBED_WORKER_CONCURRENCY=N
        settings = settings.model_copy(update={"worker_concurrency": int(options["concurrency"])})
    try:
        manifest = load_manifest(settings.model_dir)
    except ArtifactError as exc:
        log.critical("this worker cannot serve: %s", exc)
        raise SystemExit(EXIT_NO_ARTIFACT) from exc
    fingerprint = manifest.serving_fingerprint(cpu_flags())
    queues = build_queues(settings.model_name, fingerprint)
    instance.app.amqp.queues.select(queues)
    open_node(WorkerNode(settings, manifest, fingerprint, sender, instance.app))
    log.info("serving %s as %s on queues %s", manifest.name, fingerprint, ", ".join(queues))


class FleetMembership(bootsteps.StartStopStep):
    """Advertise while consuming: start with the consumer (again after a reconnect), pause with it."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, parent: Any) -> None:
        node = current_node()
        if node:
            node.start()
            node.serve_metrics()

    def stop(self, parent: Any) -> None:
        node = current_node()
        if node:
            node.stop()


app.steps["consumer"].add(FleetMembership)


@worker_shutdown.connect
def leave_fleet(**_: Any) -> None:
    node = current_node()
    if node:
        node.leave()


@task_revoked.connect
def count_revoked_chunk(request: Any = None, **_: Any) -> None:
    """A chunk revoked from Flower or `celery control revoke` counts failed (cancelled): its job ends."""
    node = current_node()
    ref = ChunkRef.from_task_id(str(getattr(request, "id", "") or ""))
    if node is None or ref is None:
        return
    node.cancel_chunk(ref, f"chunk {ref.chunk} was cancelled (revoked by an operator)")


@worker_process_init.connect
def open_engine(**_: Any) -> None:
    from worker.runtime import open_runtime

    open_runtime(settings)
