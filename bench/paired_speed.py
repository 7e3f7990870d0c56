"""Speed of ONNX builds of the model relative to the first, as paired per-round ratios.

On this shared 2-core machine whole-pass speeds swing by +-15 % within minutes, which hides a
5-10 % change. Here every round times each file once on the same short slice of STS-B dev
(order rotated), and the table gives the median and quartiles of the per-round ratios to the
first file: both sides of a ratio ran seconds apart under the same load.

    .venv/bin/python bench/paired_speed.py BASE.onnx OTHER.onnx [...] [--rounds 60 --texts 256]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from encoder_options import EncoderSetup, add_encoder_options

POOL_SENTENCES = 2048
WARMUP_TEXTS = 64
QUARTILES = (25, 50, 75)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="ONNX files; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--texts", type=int, default=256, help="sentences per timed pass")
    add_encoder_options(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    setup = EncoderSetup.from_args(args)
    pool = setup.sentences(POOL_SENTENCES)
    encoders = [setup.open(path) for path in args.models]
    for encoder in encoders:
        encoder.embed(pool[:WARMUP_TEXTS])
    seconds = np.zeros((args.rounds, len(encoders)))
    for round_ in range(args.rounds):
        start = (round_ * args.texts) % len(pool)
        texts = pool[start : start + args.texts]
        for offset in range(len(encoders)):
            index = (round_ + offset) % len(encoders)
            began = time.perf_counter()
            encoders[index].embed(texts)
            seconds[round_, index] = time.perf_counter() - began
    print(f"{args.rounds} rounds x {args.texts} sentences, {args.threads} threads, batch {args.batch_size}\n")
    print("| model | speed vs first: median | quartiles | sentences/s overall |\n|---|---|---|---|")
    for index, path in enumerate(args.models):
        q1, median, q3 = np.percentile(seconds[:, 0] / seconds[:, index], QUARTILES)
        rate = args.rounds * args.texts / seconds[:, index].sum()
        print(f"| {path} | {median:.3f} | {q1:.3f}-{q3:.3f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
