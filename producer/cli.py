"""`python -m producer submit|status|fetch|cancel`: the fleet from a shell, with exit codes scripts can use.

Exit codes: 0 done, 1 job failed, cancelled or lost, 2 bad usage or input (or Redis unreachable),
3 job not found, 4 timed out, 5 no live worker serves the model, 6 job still running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import redis

from contract.jobs import JobRecord, JobState
from contract.redis_connection import explain, mask_url
from contract.settings import FleetSettings
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
from producer.inputs import read_texts
from producer.job import Job

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_NO_FLEET, EXIT_RUNNING = range(7)
EXIT_CODES: dict[type[EmbedFleetError], int] = {
    JobFailedError: EXIT_FAILED,
    JobLostError: EXIT_FAILED,
    ResultIncompleteError: EXIT_FAILED,
    InvalidTextError: EXIT_USAGE,
    RedisUnavailableError: EXIT_USAGE,
    JobTooLargeError: EXIT_USAGE,
    JobNotFoundError: EXIT_NOT_FOUND,
    JobTimeoutError: EXIT_TIMEOUT,
    FleetUnavailableError: EXIT_NO_FLEET,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    submit = commands.add_parser("submit", help="queue a file of texts (lines, or JSONL with 'text')")
    submit.add_argument("file", type=Path)
    submit.add_argument("--wait", action="store_true", help="wait with a progress bar")
    submit.add_argument("--out", type=Path, help="save the vectors as .npy (implies --wait)")
    submit.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    status = commands.add_parser("status", help="print a job's record as JSON")
    status.add_argument("job_id")
    fetch = commands.add_parser("fetch", help="save a finished job's vectors as .npy")
    fetch.add_argument("job_id")
    fetch.add_argument("--out", type=Path, required=True)
    cancel = commands.add_parser("cancel", help="end a job now; its queued chunks are skipped")
    cancel.add_argument("job_id")
    serve = commands.add_parser("serve", help="the HTTP gateway (OpenAI's embeddings API, jobs, metrics)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    handlers: dict[str, Callable[[EmbeddingClient, argparse.Namespace], int]] = {
        "submit": run_submit,
        "status": run_status,
        "fetch": run_fetch,
        "cancel": run_cancel,
    }
    try:
        with EmbeddingClient() as client:
            return handlers[args.command](client, args)
    except EmbedFleetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES.items() if isinstance(exc, kind)), EXIT_FAILED)
    except redis.RedisError as exc:
        settings = FleetSettings()
        print(f"error: Redis at {mask_url(settings.cache_url)} failed: {explain(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn  # the gateway extra; a producer that never serves needs none of it

    uvicorn.run("producer.gateway:create_app", factory=True, host=args.host, port=args.port, log_level="info")
    return EXIT_OK


class UsageError(Exception):
    """A file the command cannot read or write; the message says which and why."""


def check_output(path: Path | None) -> None:
    """Before any work: a place the vectors can be saved (not after a long job)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory: give a file name, such as {path / 'vectors.npy'}")
    folder = path.parent.resolve()
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write --out {path}: {folder} does not exist or is not writable")


def read_input(path: Path) -> list[str]:
    if path.is_dir():
        raise UsageError(
            f"{path} is a directory: give a file with one text a line (or JSONL with a text field)"
        )
    try:
        return read_texts(path)
    except FileNotFoundError as exc:
        raise UsageError(f"no such file: {path}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def run_submit(client: EmbeddingClient, args: argparse.Namespace) -> int:
    check_output(args.out)
    job = client.submit(read_input(args.file))
    print(job.id)
    if not (args.wait or args.out):
        return EXIT_OK
    record = job.wait(timeout=args.timeout, progress=True)
    _print_record(record)
    if record.state is not JobState.DONE:
        return EXIT_FAILED
    if args.out:
        _save(job, args.out)
    return EXIT_OK


def run_status(client: EmbeddingClient, args: argparse.Namespace) -> int:
    record = client.job(args.job_id).status()
    _print_record(record)
    return EXIT_OK if record.state in (JobState.QUEUED, JobState.DONE) else EXIT_FAILED


def run_cancel(client: EmbeddingClient, args: argparse.Namespace) -> int:
    record = client.cancel(args.job_id)
    _print_record(record)
    return EXIT_OK if record.state is JobState.DONE else EXIT_FAILED


def run_fetch(client: EmbeddingClient, args: argparse.Namespace) -> int:
    check_output(args.out)
    job = client.job(args.job_id)
    if job.status().state is JobState.QUEUED:
        print(f"job {job.id} is still running: try again later", file=sys.stderr)
        return EXIT_RUNNING
    _save(job, args.out)
    return EXIT_OK


def _save(job: Job, out: Path) -> None:
    vectors = job.result()
    np.save(out, vectors)
    print(f"saved {vectors.shape[0]} x {vectors.shape[1]} float32 vectors to {out}", file=sys.stderr)


def _print_record(record: JobRecord) -> None:
    fields = asdict(record)
    fields["state"] = record.state.value
    fields["lane"] = record.lane.value
    print(json.dumps(fields, sort_keys=True))
