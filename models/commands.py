"""``avbind data``, ``avbind train`` and ``avbind eval``: argument parsing only.

Torch is imported by the handlers, not here, so ``avbind --help`` works on a core install.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict
from pathlib import Path

from avbind.models.config import TrainConfig

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where generated data and caches go: $AVBIND_CACHE, else ~/.cache/avbind."""
    return Path(os.environ.get("AVBIND_CACHE", Path.home() / ".cache" / "avbind"))


def default_data() -> Path:
    """The default avsynth set, generated on first use (about 30 s on 2 cores)."""
    from avbind.models.data.avsynth import GENERATOR_VERSION, SIZES, write_dataset

    root = cache_root() / f"avsynth-default-v{GENERATOR_VERSION}"  # a new generator never reuses old clips
    if not (root / "avsynth.json").is_file():  # written last: its presence means the set is complete
        log.info("generating the default avsynth data set in %s", root)
        write_dataset(root, SIZES["default"])
    return root


def _train(args: argparse.Namespace) -> int:
    from avbind.models.training import train

    config = TrainConfig(
        model=args.config, epochs=args.epochs, crop_steps=args.crop_steps, batch_size=args.batch_size,
        crops_per_video=args.crops_per_video, lr=args.lr, seed=args.seed, threads=args.threads,
        modalities=tuple(args.modalities),
    )
    path = train(args.data or default_data(), args.out, config, resume=args.resume)
    print(f"trained model: {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from avbind.models.evaluation import evaluate, evaluate_model_file, format_report

    data = args.data or default_data()
    if args.model:
        report = evaluate_model_file(args.model, data, args.split, args.backend)
    else:
        from avbind.models.weights import default_checkpoint

        report = evaluate(args.checkpoint or default_checkpoint(), data, args.split, args.out,
                          streaming=not args.no_streaming)
    print(format_report(report))
    if args.out:
        print(f"report and confusion matrices: {args.out}")
    return 0


def add_train_cli(subparsers: argparse._SubParsersAction) -> None:
    defaults = asdict(TrainConfig())
    p = subparsers.add_parser("train", help="train a model on an AVE-layout folder (default: avsynth)")
    p.add_argument("--data", type=Path, help="AVE-layout folder (default: generate avsynth in the cache)")
    p.add_argument("--out", type=Path, default=Path("runs/avbind-s"), help="checkpoint folder")
    p.add_argument("--config", default=defaults["model"], help="model configuration (see `avbind models`)")
    for name in ("epochs", "crop_steps", "crops_per_video", "batch_size", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name])
    p.add_argument("--lr", type=float, default=defaults["lr"])
    p.add_argument("--modalities", nargs="+", choices=("video", "audio"), default=list(defaults["modalities"]),
                   help="train a single-modality model for ablations")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.set_defaults(func=_train)


def add_eval_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="segment accuracy, offline and streaming, with modality ablations")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the shipped avbind-s)")
    source.add_argument("--model", type=Path, help="exported model file (ONNX, int8 ONNX, engine): streaming only")
    p.add_argument("--backend", default="onnxruntime", choices=("auto", "onnxruntime", "tensorrt"),
                   help="runtime backend for --model")
    p.add_argument("--data", type=Path, help="AVE-layout folder (default: avsynth in the cache)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, help="folder for eval.json and confusion-matrix PNGs")
    p.add_argument("--no-streaming", action="store_true", help="skip the step-by-step streaming run")
    p.set_defaults(func=_eval)
