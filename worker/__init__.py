"""The worker side: the Celery app (`celery -A worker worker`) and the inference engine it holds."""

from worker.app import app

__all__ = ["app"]
