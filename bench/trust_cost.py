"""What the worker's distrust costs: recomputing every digest and checking it against the job.

    .venv/bin/python bench/trust_cost.py [--n 10000] [--chunk 256] [--rounds 3]

Runs real chunks through `worker.chunk_runner.ChunkRunner` in this process (one ORT session,
1 thread, a private redis-server), and times, on the same chunks, just the checks it adds:
blake2b digests of every text, the GETRANGE of the job's digest at every position, the
comparison. Prints both and the checks' share of a chunk's run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fleet import ROOT, bench_sentences, cpu_model

from contract import keys
from contract.digest import DIGEST_BYTES, digest_for
from contract.fleet_registry import FleetRegistry, NodeAdvert
from contract.jobs import ChunkRef
from contract.settings import FleetSettings
from localfleet.redis_server import start_redis
from producer.client import EmbeddingClient
from worker.chunk_runner import ChunkRunner
from worker.payload_check import mismatched_positions, parse_payload
from worker.runtime import ProcessRuntime, open_runtime

NODE = "bench"


def payloads_of(runtime: ProcessRuntime, refs: list[ChunkRef]) -> dict[ChunkRef, bytes]:
    """Read before the chunks run: counting a chunk drops its payload."""
    return {ref: runtime.redis.hget(keys.job_payloads_key(ref.job_id), str(ref.chunk)) for ref in refs}


def checks_only(runtime: ProcessRuntime, refs: list[ChunkRef], raws: dict[ChunkRef, bytes]) -> float:
    """The digest work alone: parse, hash every text, fetch and compare the job's digests."""
    rt = runtime
    started = time.perf_counter()
    for ref in refs:
        payload = parse_payload(raws[ref], rt.settings.max_payload_bytes)
        digests = [digest_for(rt.engine.fingerprint, text) for text in payload.texts]
        positions = [p for places in payload.positions for p in places]
        pipe = rt.redis.pipeline(transaction=False)
        for position in positions:
            pipe.getrange(
                keys.job_digests_key(ref.job_id), position * DIGEST_BYTES, (position + 1) * DIGEST_BYTES - 1
            )
        mismatched_positions(payload, digests, dict(zip(positions, pipe.execute(), strict=True)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    args = parser.parse_args()
    texts = bench_sentences(args.n)
    with tempfile.TemporaryDirectory(prefix="embedfleet-trust-") as workdir:
        server = start_redis(Path(workdir))
        try:
            settings = FleetSettings(
                broker_url=server.url,
                model_dir=args.model_dir.resolve(),
                intra_op_threads=1,
                worker_concurrency=1,
                chunk_size=args.chunk,
                max_payload_bytes=64 << 20,
            )
            runtime = open_runtime(settings)
            engine = runtime.engine
            advert = NodeAdvert(
                NODE,
                settings.model_name,
                engine.fingerprint,
                engine.manifest.fingerprint,
                engine.dims,
                engine.manifest.name,
                engine.manifest.max_seq_length,
                1,
                NODE,
                0,
            )
            FleetRegistry(runtime.redis, 3600).beat(advert)
            rows = []
            with EmbeddingClient(settings) as client:
                for round_ in range(args.rounds):
                    job = client.submit([f"{text} ({round_})" for text in texts], priority="bulk")
                    refs = [ChunkRef(job.id, chunk) for chunk in range(job.status().chunks)]
                    runner = ChunkRunner(runtime, NODE)
                    raws = payloads_of(runtime, refs)
                    started = time.perf_counter()
                    for ref in refs:
                        runner.run(ref)
                    run_s = time.perf_counter() - started
                    rows.append((run_s, checks_only(runtime, refs, raws)))
        finally:
            server.stop()
    print(f"CPU: {cpu_model()}; {args.n:,} texts in chunks of {args.chunk}, 1 process x 1 thread\n")
    print("| round | chunks run (s) | texts/s | the checks alone (s) | share of the run |")
    print("|---:|---:|---:|---:|---:|")
    for number, (run_s, check_s) in enumerate(rows, start=1):
        print(f"| {number} | {run_s:.2f} | {args.n / run_s:,.0f} | {check_s:.3f} | {check_s / run_s:.2%} |")


if __name__ == "__main__":
    main()
