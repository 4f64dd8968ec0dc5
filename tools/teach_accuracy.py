"""Teach mode's figures for the README: training time and accuracy on held-out takes.

Three classes (scikit-image's chelsea, coffee and rocket photographs, each with its espeak-ng
word over noise; tests/teach_scenes.py) of 3 takes x 10 s, plus 3 background takes, are taught
with ``avbind teach train``'s recipe; the model is then run by ONNX Runtime, step by step as the
engine runs it, on held-out takes drawn apart (other sizes, positions, backgrounds, voice and
noise), with both inputs, with each masked (no microphone / no camera given), with the microphone
muted (silence where the sound was) and with the camera covered (dark frames).

    python tools/teach_accuracy.py --out runs/teach --threads 2 [--scratch] [--json tools/teach-cpu-2core.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import teach_scenes as scenes


def write_variants(root: Path, takes: int, seconds: float, seed: int) -> dict[str, Path]:
    """Held-out takes as recorded, with the microphone muted, and with the camera covered."""
    from avbind.models.data.avsynth import write_mp4

    folders = {name: root / name for name in ("heldout", "muted", "covered")}
    rng = np.random.default_rng(seed)
    for c, category in enumerate([*scenes.CLASSES, scenes.BACKGROUND]):
        for k in range(takes):
            frames, audio = scenes.render(scenes.Take(category, seed * 1000 + c * 100 + k, seconds, "heldout"))
            name = f"{category}/take-{k + 1:03d}.mp4"
            for folder in folders.values():
                (folder / category).mkdir(parents=True, exist_ok=True)
            write_mp4(folders["heldout"] / name, frames, audio, scenes.FPS, scenes.RATE)
            write_mp4(folders["muted"] / name, frames, np.zeros_like(audio), scenes.FPS, scenes.RATE)
            dark = np.clip(8 + rng.normal(0, 2, frames.shape), 0, 255).astype(np.uint8)  # a hand over the lens
            write_mp4(folders["covered"] / name, dark, audio, scenes.FPS, scenes.RATE)
    return folders


def accuracy(model: Path, folders: dict[str, Path]) -> dict:
    from avbind.models.evaluation import evaluate_model_file

    result = {}
    for name, folder in folders.items():
        ablations = ("fusion", "video only", "audio only") if name == "heldout" else ("fusion",)
        report = evaluate_model_file(model, folder, None, ablations=ablations, progress=False)
        for ablation, entry in report["ablations"].items():
            key = {"heldout": ablation, "muted": "microphone muted", "covered": "camera covered"}[name] if (
                name != "heldout" or ablation == "fusion") else f"{ablation} (other masked)"
            key = "both" if key == "fusion" else key
            result[key] = {"segment_accuracy": entry["streaming"]["segment_accuracy"],
                           "per_class": entry["streaming"]["per_class_accuracy"],
                           "segments": report["segments"]}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/teach"))
    parser.add_argument("--takes", type=int, default=3, help="training takes per class and of background")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--heldout-takes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one model each)")
    parser.add_argument("--scratch", action="store_true", help="also train the audio encoder from scratch")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from avbind.models.config import TeachConfig
    from avbind.models.teach import teach
    from avbind.realtime.bench import machine

    args.out.mkdir(parents=True, exist_ok=True)
    train = args.out / "takes"
    if not train.is_dir():
        scenes.write_folder(train, args.takes, args.seconds, "train", seed=0)
    folders = {n: args.out / n for n in ("heldout", "muted", "covered")}
    if not folders["heldout"].is_dir():
        folders = write_variants(args.out, args.heldout_takes, args.seconds, seed=7)
    runs = []
    for seed in args.seeds:
        for how in ("shipped", "scratch") if args.scratch else ("shipped",):
            tc = TeachConfig(threads=args.threads, seed=seed, audio_init=how)
            cache = args.out / f"cache-{seed}-{how}"  # a fresh cache: the time includes decoding and features
            started = time.perf_counter()
            report = teach(train, args.out / f"model-{seed}-{how}.onnx", tc, cache_dir=cache)
            wall = time.perf_counter() - started
            run = {"seed": seed, "audio_init": how, "train_wall_s": round(wall, 1),
                   "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
                   "validation": report.validation[report.audio_init],
                   "heldout": accuracy(args.out / f"model-{seed}-{how}.onnx", folders)}
            runs.append(run)
            shown = {k: round(v["segment_accuracy"], 3) for k, v in run["heldout"].items()}
            print(f"seed {seed}, audio {how}: trained in {wall:.0f} s; held-out segment accuracy {shown}", flush=True)
    result = {
        "what": f"avbind teach train on {len(scenes.CLASSES)} classes x {args.takes} takes x {args.seconds:g} s "
                f"+ {args.takes} background takes; held out: {args.heldout_takes} takes per class and background",
        "machine": {**machine(), "threads": args.threads},
        "teach_config": asdict(replace(TeachConfig(), threads=args.threads)),
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
