"""The OpenVINO peer: sentence-transformers' static int8 export (NNCF), timed in its own venv.

Runs under bench/.venv-openvino (see requirements-openvino.txt), never in the project's venv,
and imports nothing from the project. bench/throughput.py starts it and talks to it in JSON
lines, so its passes interleave with the in-process variants:

    stdin  {"cmd": "pass"}                                  -> stdout {"seconds": 1.23}
    stdin  {"cmd": "embed", "texts": IN.json, "out": OUT.npy} -> stdout {"rows": 2900}
    (start-up)                                              -> stdout {"ready": true, ...}

Everything the libraries print goes to stderr; stdout carries the protocol only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

QUANTIZED_SUFFIX = "qint8_quantized"
QUANTIZED_FILE = f"openvino/openvino_model_{QUANTIZED_SUFFIX}.xml"
CALIBRATION_COLUMN = "sentence"
CALIBRATION_CONFIG = "default"
CALIBRATION_SPLIT = "train"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="sentence-transformers model dir")
    parser.add_argument("--model-dir", type=Path, required=True, help="where the int8 copy lives")
    parser.add_argument("--calibration", type=Path, required=True, help="one sentence per line")
    parser.add_argument("--timed", type=Path, required=True, help="JSON list of timed sentences")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    return parser.parse_args()


def protocol_stream() -> TextIO:
    """Keep the real stdout for the protocol; send every other write on fd 1 to stderr."""
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return stream


def export_quantized(source: Path, model_dir: Path, calibration: Path) -> None:
    """Copy the source model and add NNCF's static int8 OpenVINO IR next to it (once)."""
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import SentenceTransformer, export_static_quantized_openvino_model

    if (model_dir / QUANTIZED_FILE).is_file():
        return
    shutil.copytree(source, model_dir, dirs_exist_ok=True)
    sentences = [line for line in calibration.read_text(encoding="utf-8").splitlines() if line]
    model = SentenceTransformer(str(model_dir), backend="openvino", device="cpu")
    with tempfile.TemporaryDirectory() as data_dir:
        rows = (json.dumps({CALIBRATION_COLUMN: text}) for text in sentences)
        (Path(data_dir) / f"{CALIBRATION_SPLIT}.jsonl").write_text("\n".join(rows) + "\n")
        export_static_quantized_openvino_model(
            model,
            OVQuantizationConfig(num_samples=len(sentences)),
            str(model_dir),
            dataset_name=data_dir,
            dataset_config_name=CALIBRATION_CONFIG,
            dataset_split=CALIBRATION_SPLIT,
            column_name=CALIBRATION_COLUMN,
            file_suffix=QUANTIZED_SUFFIX,
        )


def load_quantized(model_dir: Path, threads: int) -> Any:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)  # tokenisation and pooling run in torch
    ov_config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": ""}
    return SentenceTransformer(
        str(model_dir),
        backend="openvino",
        device="cpu",
        model_kwargs={"file_name": QUANTIZED_FILE, "ov_config": ov_config},
    )


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("openvino", "nncf", "optimum-intel", "sentence-transformers", "torch")
    return {name: version(name) for name in names}


def serve(model: Any, timed: list[str], batch_size: int, out: TextIO) -> None:
    def encode(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True)

    encode(timed)  # warm-up
    reply(out, {"ready": True, "versions": versions()})
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "pass":
            start = time.perf_counter()
            encode(timed)
            reply(out, {"seconds": time.perf_counter() - start})
        elif request["cmd"] == "embed":
            import numpy as np

            vectors = encode(json.loads(Path(request["texts"]).read_text(encoding="utf-8")))
            np.save(request["out"], vectors.astype(np.float32))
            reply(out, {"rows": int(vectors.shape[0])})
        else:
            reply(out, {"error": f"unknown command {request['cmd']!r}"})


def reply(out: TextIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")


def main() -> None:
    args = parse_args()
    out = protocol_stream()
    export_quantized(args.source, args.model_dir, args.calibration)
    model = load_quantized(args.model_dir, args.threads)
    timed = json.loads(args.timed.read_text(encoding="utf-8"))
    serve(model, timed, args.batch_size, out)


if __name__ == "__main__":
    main()
