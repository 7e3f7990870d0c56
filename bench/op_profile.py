"""Where an ONNX build of the model spends its time, by operator type (ORT's own profiler).

Runs the serving encoder once over STS-B dev sentences with `SessionOptions.enable_profiling`
and sums the kernel times per op type: what a graph rewrite can still win is in this table.

    .venv/bin/python bench/op_profile.py artifacts/all-MiniLM-L6-v2/model.onnx [--texts 2048]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import onnxruntime as ort
from encoder_options import EncoderSetup, add_encoder_options

from worker.batching import TokenBudgetBatcher
from worker.engine import SentenceEncoder, session_options
from worker.tokenization import TextTokenizer

WARMUP_TEXTS = 64
KERNEL_SUFFIX = "_kernel_time"
US_PER_MS = 1e3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX file")
    parser.add_argument("--texts", type=int, default=2048, help="unique dev sentences")
    add_encoder_options(parser)
    return parser.parse_args()


def kernel_times_us(profile: Path) -> Counter[str]:
    times: Counter[str] = Counter()
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith(KERNEL_SUFFIX):
            times[event["args"]["op_name"]] += event["dur"]
    return times


def main() -> None:
    args = parse_args()
    setup = EncoderSetup.from_args(args)
    manifest, settings = setup.manifest, setup.settings
    texts = setup.sentences(args.texts)
    with tempfile.TemporaryDirectory(prefix="op-profile-") as workdir:
        options = session_options(manifest.ort_session, args.threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(workdir) / "profile")
        session = ort.InferenceSession(
            str(args.model),
            options,
            providers=settings.providers,
            disabled_optimizers=manifest.ort_session.disabled_optimizers or None,
        )
        tokenizer = TextTokenizer(setup.tokenizer_file, manifest.max_seq_length, settings.max_text_chars)
        batcher = TokenBudgetBatcher(
            settings.token_budget, settings.max_batch_size, settings.run_overhead_tokens or 0
        )
        encoder = SentenceEncoder(session, tokenizer, batcher, manifest.normalize)
        encoder.embed(texts[:WARMUP_TEXTS])
        encoder.embed(texts)
        times = kernel_times_us(Path(session.end_profiling()))
    total = sum(times.values())
    run = f"{args.threads} threads, batch {args.batch_size}"
    print(f"{args.model}: {len(texts)} sentences (+{WARMUP_TEXTS} warm-up, profiled too), {run}\n")
    print("| op type | kernel ms | share |\n|---|---:|---:|")
    for op, micros in times.most_common():
        print(f"| {op} | {micros / US_PER_MS:,.1f} | {100 * micros / total:.1f} % |")
    print(f"| total | {total / US_PER_MS:,.1f} | |")


if __name__ == "__main__":
    main()
