"""Each side installs only what it needs: a web app imports the producer without the model runtime,
Flower loads the task module without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("onnxruntime", "torch", "tokenizers")


@pytest.mark.parametrize("module", ["producer", "producer.async_client", "worker.tasks", "worker.app"])
def test_importing_needs_no_model_runtime(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(name for name in {HEAVY!r} if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"
