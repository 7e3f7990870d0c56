"""Per-channel maxima of each FFN down-projection input (the GELU outputs), over the calibration text.

Shows why the static-int8 recipe splits outlier channels off (modelbuild/outlier_split.py): each
early layer has one or two channels far above the 99th percentile of all channels' maxima.

    .venv/bin/python bench/activation_outliers.py [--top 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from contract.manifest import TOKENIZER_FILE
from modelbuild.calibration import iter_feeds, load_tokenizer, read_corpus
from modelbuild.export import export_onnx
from modelbuild.optimize import optimize
from modelbuild.outlier_split import DEFAULT_SOURCE_OPS, REFERENCE_PERCENTILE
from modelbuild.smoothquant import activation_amax, find_targets
from modelbuild.source import read_source

DEFAULT_TOP = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="largest channel maxima shown")
    args = parser.parse_args()
    source = read_source()
    tokenizer = load_tokenizer(source.path / TOKENIZER_FILE, source.max_seq_length)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_onnx(source.path, work / "export.onnx")
        optimize(work / "export.onnx", work / "fp32.onnx", source.num_heads, source.dims)
        model = onnx.load(str(work / "fp32.onnx"))
    targets = find_targets(model, DEFAULT_SOURCE_OPS)
    amax = activation_amax(model, [t.tensor for t in targets], iter_feeds(tokenizer, read_corpus()))
    print(f"| layer | largest channel maxima | {REFERENCE_PERCENTILE:.0f}th percentile of maxima | median |")
    print("|---|---|---|---|")
    for layer, target in enumerate(targets):
        values = amax[target.tensor]
        top = ", ".join(f"{v:.1f}" for v in np.sort(values)[::-1][: args.top])
        p99, median = np.percentile(values, REFERENCE_PERCENTILE), np.median(values)
        print(f"| {layer} | {top} | {p99:.2f} | {median:.2f} |")


if __name__ == "__main__":
    main()
