"""`python -m worker reconcile [JOB_ID ...]`: one reconciler sweep by hand, printed.
`python -m worker health [--node NAME]`: exit 0 while the node's heartbeat is fresh (a liveness probe)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

import redis

from contract import keys
from contract.redis_connection import connect, mask_url
from contract.settings import FleetSettings, get_settings
from worker.app import app
from worker.reconciler import Reconciler

EXIT_UNREACHABLE = 2  # as the producer CLI: Redis could not be reached


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reconcile = commands.add_parser("reconcile", help="send lost chunks again, end stalled jobs")
    reconcile.add_argument("job_ids", nargs="*", help="only these jobs (default: every running job)")
    health = commands.add_parser("health", help="exit 0 while this node's heartbeat is fresh")
    health.add_argument("--node", default=f"celery@{socket.gethostname()}", help="node name (celery -n)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    if args.command == "health":
        return node_health(settings, args.node)
    try:
        report = Reconciler(app, connect(settings.cache_url, settings), settings).sweep(args.job_ids or None)
    except redis.RedisError as exc:
        print(f"error: Redis at {mask_url(settings.cache_url)} unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(report)
    return 0


def node_health(settings: FleetSettings, node: str) -> int:
    try:
        alive = bool(connect(settings.cache_url, settings, 0).exists(keys.node_key(node)))
    except redis.RedisError as exc:
        print(f"unhealthy: Redis at {mask_url(settings.cache_url)} unreachable: {exc}", file=sys.stderr)
        return 1
    print("healthy" if alive else f"unhealthy: no fresh heartbeat from {node}")
    return 0 if alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
