"""avbind-lite0 from ImageNet against avbind-lite0 from scratch: same recipe, same budget, one run.

Each variant trains one epoch at a time (``train(..., stop_after=1)``, then ``resume``), and after
every epoch its ``last.pt`` is scored on the validation split, so the JSON says not only where
each ends but how fast each learns. The test split is scored at the end. Usage:

    python tools/compare_pretrained.py --out runs/lite0-compare [--epochs 3] [--input-size 128]

Writes OUT/compare.json (and prints it). Both variants share the data, seed, crops and schedule;
only the backbone's starting weights differ.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from avbind.models.commands import default_data
from avbind.models.config import TrainConfig
from avbind.models.evaluation import evaluate
from avbind.models.training import train


def fusion_accuracy(checkpoint: Path, data: Path, split: str) -> float:
    report = evaluate(checkpoint, data, split, ablations=("fusion",), streaming=False, progress=False)
    return report["ablations"]["fusion"]["offline"]["segment_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="AVE-layout folder (default: the avsynth default set)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--crops-per-video", type=int, default=TrainConfig.crops_per_video)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    data = args.data or default_data()
    report = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
              "data": str(data), "epochs": args.epochs, "input_size": args.input_size, "variants": {}}
    for name, pretrained in (("imagenet", True), ("scratch", False)):
        config = TrainConfig(model="avbind-lite0", epochs=args.epochs, input_size=args.input_size,
                             crops_per_video=args.crops_per_video, pretrained=pretrained, threads=args.threads)
        out = args.out / name
        history = []
        started = time.perf_counter()
        train_seconds = 0.0
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            last = train(data, out, config, resume=epoch > 0, stop_after=1, progress=False)
            train_seconds += time.perf_counter() - t0
            history.append({"epoch": epoch + 1, "val_segment_accuracy": fusion_accuracy(out / "last.pt", data, "val"),
                            "train_seconds_so_far": round(train_seconds, 1)})
            print(name, history[-1], flush=True)
        final = out / "model.pt" if (out / "model.pt").is_file() else last
        report["variants"][name] = {
            "history": history, "test_segment_accuracy": fusion_accuracy(final, data, "test"),
            "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
