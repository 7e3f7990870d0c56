"""What a worker's batching costs per chunk size: padded tokens, sentences/s, and one run's price.

A worker batches only the chunk it was sent, and producers sort texts by characters (they have
no tokenizer), so padding depends on the chunk size and on where the batcher cuts. Prints
(1) the fit of one `session.run` to a + b x padded tokens, as each worker measures it (worker.run_cost);
(2) padded vs real tokens and in-process sentences/s per chunk size, cutting batches as the
worker does (`--overhead-tokens`) and by fewest runs (one full batch after another), interleaved
over rounds.

    .venv/bin/python bench/chunk_batching.py [--n 4000 --threads 1 --chunks 64 256 0 --rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from fleet import bench_sentences
from peers import REPO_ROOT

from contract.settings import FleetSettings
from worker.batching import TokenBudgetBatcher
from worker.engine import EmbeddingEngine
from worker.run_cost import measure_run_cost

FEWEST_RUNS = 10**9  # an overhead so large that the partition packs full batches


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="unique STS-B sentences")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (a fleet worker has 1)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256, 0], help="0 = one call")
    parser.add_argument(
        "--overhead-tokens", type=int, default=None, help="default: as a worker measures it"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--model-dir", type=Path, default=REPO_ROOT / "artifacts" / "all-MiniLM-L6-v2", help="artifact"
    )
    return parser.parse_args()


def padding(lengths: list[int], chunk: int, batcher: TokenBudgetBatcher) -> tuple[int, int]:
    padded = 0
    for start in range(0, len(lengths), chunk):
        part = lengths[start : start + chunk]
        padded += sum(len(b) * max(part[i] for i in b) for b in batcher.batches(part))
    return padded, sum(lengths)


def main() -> None:
    args = parse_args()
    texts = sorted(bench_sentences(args.n), key=len)  # as the producer orders a job's misses
    settings = FleetSettings(intra_op_threads=args.threads, worker_concurrency=1)
    engine = EmbeddingEngine(args.model_dir, settings)
    engine.warm_up()
    cost = measure_run_cost(engine.probe)
    print(
        f"session.run at {args.threads} thread(s): {cost.fixed_s * 1e3:.2f} ms + "
        f"{cost.per_token_s * 1e6:.1f} us per padded token; one run costs about {cost.overhead_tokens} "
        "padded tokens\n"
    )
    overhead = cost.overhead_tokens if args.overhead_tokens is None else args.overhead_tokens
    encodings, _ = engine.tokenizer.encode(texts)
    lengths = [len(encoding.ids) for encoding in encodings]
    cuts = {"partition": overhead, "fewest runs": FEWEST_RUNS}
    rows = [(chunk or len(texts), name, overhead) for chunk in args.chunks for name, overhead in cuts.items()]
    seconds = {row: 0.0 for row in rows}
    for _ in range(args.rounds):
        for row in rows:
            chunk, _, overhead = row
            engine.batcher = dataclasses.replace(engine.batcher, run_overhead_tokens=overhead)
            began = time.perf_counter()
            for start in range(0, len(texts), chunk):
                engine.embed(texts[start : start + chunk])
            seconds[row] += time.perf_counter() - began
    print("| chunk | batches cut by | padded / real tokens | sentences/s |\n|---|---|---|---|")
    for row in rows:
        chunk, name, overhead = row
        padded, real = padding(
            lengths, chunk, dataclasses.replace(engine.batcher, run_overhead_tokens=overhead)
        )
        rate = args.rounds * len(texts) / seconds[row]
        print(f"| {chunk} | {name} | {padded / real:.3f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
