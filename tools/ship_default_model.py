"""Rebuild the shipped avbind-s from scratch: data, training, evaluation, export, int8.

    python tools/ship_default_model.py [--work DIR]

Writes models/weights/avbind-s.{pt,onnx,int8.onnx} and prints the figures that go in the README.
Everything is seeded; the default recipe (models/config.py TrainConfig) is what runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from avbind.export.onnx import export_model
from avbind.export.quantize import avsynth_calibration_streams, quantize_model
from avbind.models.checkpoint import load_model
from avbind.models.config import TrainConfig
from avbind.models.data.avsynth import SIZES, write_dataset
from avbind.models.evaluation import evaluate, evaluate_model_file, format_report
from avbind.models.training import train

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/ship"), help="scratch folder")
    parser.add_argument("--skip-train", action="store_true", help="reuse WORK/train/model.pt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = args.work / "avsynth"
    if not (data / "avsynth.json").is_file():
        write_dataset(data, SIZES["default"])
    figures: dict = {}
    if not args.skip_train:
        started = time.perf_counter()
        train(data, args.work / "train", TrainConfig())
        figures["train_seconds"] = time.perf_counter() - started
    checkpoint = args.work / "train" / "model.pt"
    report = evaluate(checkpoint, data, "test", args.work / "eval")
    print(format_report(report))
    figures["eval"] = report
    model = load_model(checkpoint)
    onnx_path, int8_path = args.work / "avbind-s.onnx", args.work / "avbind-s.int8.onnx"
    export_model(model, onnx_path)
    quantize_model(onnx_path, int8_path, avsynth_calibration_streams(data, model.config, clips=16))
    for path in (onnx_path, int8_path):
        result = evaluate_model_file(path, data, "test", ablations=("fusion",))
        print(format_report(result))
        figures[path.name] = result
    WEIGHTS.mkdir(exist_ok=True)
    shutil.copy(checkpoint, WEIGHTS / "avbind-s.pt")
    shutil.copy(onnx_path, WEIGHTS / "avbind-s.onnx")
    shutil.copy(int8_path, WEIGHTS / "avbind-s.int8.onnx")
    (args.work / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    print(f"shipped to {WEIGHTS}; figures in {args.work / 'figures.json'}")


if __name__ == "__main__":
    main()
