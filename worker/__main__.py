"""`python -m worker reconcile [JOB_ID ...]`: one reconciler sweep by hand, printed."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import redis

from contract.redis_connection import connect, mask_url
from contract.settings import get_settings
from worker.app import app
from worker.reconciler import Reconciler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    reconcile = commands.add_parser("reconcile", help="send lost chunks again, end stalled jobs")
    reconcile.add_argument("job_ids", nargs="*", help="only these jobs (default: every running job)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    try:
        report = Reconciler(app, connect(settings.cache_url, settings), settings).sweep(args.job_ids or None)
    except redis.RedisError as exc:
        print(f"error: Redis at {mask_url(settings.cache_url)} unreachable: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
