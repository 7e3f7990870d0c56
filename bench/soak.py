"""Soak: a real fleet fed mixed-length jobs for a long time; worker RSS must plateau.

    .venv/bin/python bench/soak.py [--minutes 60] [--warmup-minutes 5] [--markdown bench/out/soak.md]

ONNX Runtime's arena and memory patterns grow with each new input shape; texts of every length
from a few words to the model's limit make every batch shape occur. Prints RSS per pool child
each minute and the growth after warm-up (pass: <= 10 %). Private redis-server, 2 prefork
processes x 1 thread, as in bench/fleet.py.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from fleet import ROOT, bench_sentences, cpu_model, publish, rss_kib, start_bench_fleet

KIB = 1024
SAMPLE_S = 60.0
GROWTH_LIMIT = 0.10
JOB_SIZES = (1, 16, 256, 2_000)
MAX_REPEATS = 12
SEED = 7


def mixed_texts(pool: list[str], count: int, rng: random.Random, tag: int) -> list[str]:
    """Texts from a few words up to past the model's limit, each new (tagged) so nothing is cached."""
    return [" ".join(rng.choices(pool, k=rng.randint(1, MAX_REPEATS))) + f" #{tag}.{i}" for i in range(count)]


def soak(minutes: float, model_dir: Path, workdir: Path) -> list[tuple[float, int, list[int]]]:
    pool = bench_sentences(5_000)
    rng = random.Random(SEED)
    samples: list[tuple[float, int, list[int]]] = []
    with ExitStack() as stack:
        fleet = start_bench_fleet(stack, workdir, model_dir)
        client = stack.enter_context(fleet.client())
        started, texts_done, tag = time.monotonic(), 0, 0
        next_sample = started
        while time.monotonic() - started < minutes * 60:
            if time.monotonic() >= next_sample:
                samples.append(
                    (time.monotonic() - started, texts_done, [rss_kib(p) // KIB for p in fleet.children()])
                )
                print(
                    f"{samples[-1][0] / 60:5.1f} min  {texts_done:>9,} texts  RSS MiB {samples[-1][2]}",
                    flush=True,
                )
                next_sample += SAMPLE_S
            size = rng.choice(JOB_SIZES)
            tag += 1
            client.submit(mixed_texts(pool, size, rng, tag)).wait()
            texts_done += size
        samples.append(
            (time.monotonic() - started, texts_done, [rss_kib(p) // KIB for p in fleet.children()])
        )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/all-MiniLM-L6-v2")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="embedfleet-soak-") as workdir:
        samples = soak(args.minutes, args.model_dir.resolve(), Path(workdir))
    warm = [sample for sample in samples if sample[0] >= args.warmup_minutes * 60]
    base, peak = max(warm[0][2]), max(max(rss) for _, _, rss in warm)
    growth = peak / base - 1
    lines = [
        f"CPU: {cpu_model()}; {args.minutes:.0f} min, jobs of {JOB_SIZES} mixed-length texts",
        "",
        "| minute | texts done | RSS per pool child (MiB) |",
        "|---:|---:|---|",
    ]
    lines += [f"| {t / 60:.0f} | {n:,} | {rss} |" for t, n, rss in samples]
    verdict = "pass" if growth <= GROWTH_LIMIT else "FAIL"
    lines += [
        "",
        f"RSS after {args.warmup_minutes:.0f} min warm-up: {base} MiB; peak after: {peak} MiB; "
        f"growth {growth:+.1%} (limit {GROWTH_LIMIT:.0%}): {verdict}",
    ]
    report = "\n".join(lines) + "\n"
    publish(report, args.markdown)


if __name__ == "__main__":
    main()
