"""`make demo`: a two-process fleet with Flower on this machine, a corpus through it, a search over it."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from contract.settings import FleetSettings
from localfleet.demo_corpus import DEMO_QUERIES, demo_corpus
from localfleet.fleet import LocalFleet, fleet_env
from localfleet.redis_server import free_port, start_redis
from producer.client import EmbeddingClient

DEMO_PROCESSES = 2
TOP_K = 3


def run_corpus(client: EmbeddingClient, corpus: list[str]) -> np.ndarray:
    started = time.perf_counter()
    job = client.submit(corpus)
    queued = job.status()
    print(f"job {job.id}: {queued.total} texts, {queued.done} already cached, {queued.chunks} chunks")
    job.wait(progress=True)
    vectors = job.result()
    elapsed = time.perf_counter() - started
    print(f"embedded {len(corpus)} texts in {elapsed:.2f} s: {len(corpus) / elapsed:,.0f} texts/s")
    again = time.perf_counter()
    client.embed(corpus)
    cached = time.perf_counter() - again
    print(f"resubmitted: all cache hits, {cached:.3f} s ({elapsed / cached:,.0f}x faster)")
    return vectors


def show_search(client: EmbeddingClient, corpus: list[str], vectors: np.ndarray) -> None:
    queries = client.embed(list(DEMO_QUERIES))
    scores = queries @ vectors.T
    for query, row in zip(DEMO_QUERIES, scores, strict=True):
        print(f"\nquery: {query}")
        for index in np.argsort(-row)[:TOP_K]:
            print(f"  {row[index]:.3f}  {corpus[index]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localfleet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the fleet and Flower up until Ctrl-C")
    args = parser.parse_args(argv)
    settings = FleetSettings()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="embedfleet-demo-")))
        # A redis-server of its own (AOF on): the demo never shares queues or jobs with another fleet.
        server = start_redis(workdir / "redis")
        stack.callback(server.stop)
        print(f"started a private redis-server at {server.url}")
        fleet_settings, env = fleet_env(
            {
                "EMBED_BROKER_URL": server.url,
                "EMBED_MODEL_DIR": str(settings.model_dir.resolve()),
                "EMBED_WORKER_CONCURRENCY": str(DEMO_PROCESSES),
                "EMBED_INTRA_OP_THREADS": "1",
            }
        )
        fleet = stack.enter_context(LocalFleet(fleet_settings, env, workdir / "worker.log"))
        flower_port = free_port()
        print(f"starting {DEMO_PROCESSES} worker processes and Flower ...")
        fleet.start(flower_port=flower_port)
        print(f"Flower shows the fleet at http://127.0.0.1:{flower_port}")
        corpus = demo_corpus()
        client = stack.enter_context(fleet.client())
        vectors = run_corpus(client, corpus)
        show_search(client, corpus, vectors)
        if args.keep:
            print(f"\nthe fleet stays up (Flower at http://127.0.0.1:{flower_port}, Redis at {server.url})")
            print("Ctrl-C stops it")
            signal.pause()
        print("\nstopping the fleet")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started has been stopped", file=sys.stderr)
        sys.exit(130)
