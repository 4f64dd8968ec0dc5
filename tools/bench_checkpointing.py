"""What activation checkpointing costs in time: one avbind-s training pass (forward + backward) over
a batch of 8 crops of 15 steps, with it off and on, interleaved in one run so both see the same
machine load.

    python tools/bench_checkpointing.py [--repeats 4] [--threads 2] [--out tools/checkpointing-cpu-2core.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from avbind.models.config import get_config
from avbind.models.network import AVBindNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="avbind-s")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = get_config(args.config)
    net = AVBindNet(config).to(memory_format=torch.channels_last).train()
    size = config.video.input_size
    frames = torch.rand(args.batch, args.steps, 3, size, size)
    mels = torch.randn(args.batch, args.steps, *net._audio_shape())
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            net.video.checkpointing = mode == "on"
            start = time.perf_counter()
            outputs, _ = net(frames, mels)
            sum(v.float().square().mean() for v in outputs.values()).backward()
            net.zero_grad(set_to_none=True)
            seconds[mode].append(round(time.perf_counter() - start, 3))
    median = {mode: statistics.median(v) for mode, v in seconds.items()}
    # The fastest pass is the one least disturbed by other work on a shared machine.
    fastest = {mode: min(v) for mode, v in seconds.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "config": args.config, "batch": args.batch, "steps": args.steps, "threads": args.threads,
        "pass_s": seconds, "median_s": median, "min_s": fastest,
        "on_over_off_min": round(fastest["on"] / fastest["off"], 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
