"""Training throughput from the prepared cache vs decoding every clip each epoch, in one run.

Usage: python tools/bench_training_input.py [--config avbind-s] [--epochs 2] [--out tools/training-input-cpu-2core.json]

Both modes run the same crops, the same model and the same optimiser steps on the avsynth
"small" training split (60 ten-second clips, generated on first use); they differ only in where a
batch's frames and log-mel come from: the cache (read by slices from disk), or a fresh decode of
every clip at the start of each epoch, which is what training without a cache has to do.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from avbind.models.commands import cache_root
from avbind.models.config import TrainConfig, get_config
from avbind.models.data.ave import load_ave
from avbind.models.data.avsynth import GENERATOR_VERSION, SIZES, write_dataset
from avbind.models.data.steps import PreparedVideos, prepare_dataset, prepare_video
from avbind.models.training import AuxiliaryHeads, CropBatches, build_model, compute_loss, crop_plan


def _machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except StopIteration:
        model = platform.processor()
    return f"{model}, {torch.get_num_threads()} threads"


def _epoch(model, aux, optimizer, videos, tc, config, rng) -> int:
    batches = CropBatches(videos, crop_plan(videos, tc, rng), tc.crop_steps, config)
    for i in range(len(batches)):
        (frames, mels, mask), targets = batches[i]
        outputs, _ = model(frames, mels, mask, return_features=True)
        loss, _ = compute_loss(model, outputs, targets, tc, aux, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="avbind-s")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    data = cache_root() / f"avsynth-small-v{GENERATOR_VERSION}"
    if not (data / "avsynth.json").is_file():
        write_dataset(data, SIZES["small"])
    dataset = load_ave(data, "train")
    tc = TrainConfig(model=args.config)
    config = get_config(args.config)
    model = build_model(config, dataset).to(memory_format=torch.channels_last)
    aux = AuxiliaryHeads(model)
    optimizer = torch.optim.AdamW([*model.parameters(), *aux.parameters()], lr=tc.lr)
    cache = data / ".avbind-cache-bench"
    started = time.perf_counter()
    cached = prepare_dataset(dataset, model.config, cache, progress=False)
    prepare_s = time.perf_counter() - started
    results = {}
    for mode in ("cache", "decode each epoch"):
        seconds, batches = [], 0
        for epoch in range(args.epochs):
            rng = np.random.default_rng([tc.seed, epoch])
            started = time.perf_counter()
            if mode == "cache":
                videos = cached
            else:  # in this process, as a trainer without a cache would, before the epoch's batches
                videos = PreparedVideos([
                    prepare_video(v, dataset.labels(v), model.config) for v in dataset.videos])
            batches = _epoch(model, aux, optimizer, videos, tc, model.config, rng)
            seconds.append(time.perf_counter() - started)
        mean = float(np.mean(seconds))
        results[mode] = {"epoch_s": mean, "clips_per_s": len(dataset.videos) / mean,
                         "crops_per_s": batches * tc.batch_size / mean, "epochs": args.epochs}
    report = {
        "machine": _machine(), "torch": torch.__version__, "config": args.config, "clips": len(dataset.videos),
        "crops_per_clip": tc.crops_per_video, "batch_size": tc.batch_size, "prepare_once_s": prepare_s,
        "modes": results,
        "speedup": results["cache"]["clips_per_s"] / results["decode each epoch"]["clips_per_s"],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

