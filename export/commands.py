"""``avbind export``: argument parsing only; torch and TensorRT are imported by the handler."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _export(args: argparse.Namespace) -> int:
    if args.from_onnx is not None:  # only the deployment steps: no torch needed
        if args.int8 or args.input_size:
            raise SystemExit("avbind export: --int8 and --input-size need the model, not --from-onnx")
        if not args.triton and not args.tensorrt:
            raise SystemExit("avbind export: --from-onnx needs --triton DIR or --tensorrt")
        _deploy(args, args.from_onnx, args.from_onnx)
        return 0
    from avbind.export.onnx import export_model
    from avbind.models.checkpoint import load_model

    if args.config:
        from avbind.models.config import get_config
        from avbind.models.network import AVBindNet

        log.warning("exporting %s with random weights (no --checkpoint): for timing, not for predictions",
                    args.config)
        model = AVBindNet(get_config(args.config)).eval()
    else:
        from avbind.models.weights import default_checkpoint

        model = load_model(args.checkpoint or default_checkpoint())
    if args.input_size:
        model = _at_input_size(model, args.input_size)
    info = export_model(model, args.out, opset=args.opset, max_batch=args.max_batch, simplify=args.simplify)
    print(f"ONNX: {args.out} ({info.name}, {len(info.states)} state tensors, opset {args.opset})")
    onnx_for_engine = Path(args.out)
    if args.int8:
        from avbind.export.quantize import avsynth_calibration_streams, quantize_model
        from avbind.models.commands import default_data

        int8_path = Path(args.out).with_suffix(".int8.onnx")
        streams = avsynth_calibration_streams(args.calibration_data or default_data(), model.config,
                                              clips=args.calibration_clips)
        quantize_model(args.out, int8_path, streams)
        print(f"int8 QDQ ONNX: {int8_path}")
        onnx_for_engine = int8_path
    _deploy(args, Path(args.out), onnx_for_engine)
    return 0


def _deploy(args: argparse.Namespace, onnx_path: Path, onnx_for_engine: Path) -> None:
    """The Triton repository (from the fp32 file) and the TensorRT engine (from int8 if made)."""
    if args.triton:
        from avbind.export.triton import write_triton_repository

        triton = write_triton_repository(onnx_path, args.triton, max_candidate_sequences=args.triton_sequences,
                                         idle_timeout_s=args.triton_idle_s, max_batch=args.triton_max_batch)
        renamed = f"; {len(triton.renamed) // 2} state pairs renamed to sort alike" if triton.renamed else ""
        print(f"Triton model repository: {triton.folder} ({len(triton.states)} implicit states{renamed}; "
              "not run here)")
    if args.tensorrt:
        from avbind.export.tensorrt import EngineOptions, build_engine

        precision = "int8" if args.int8 else args.precision
        options = EngineOptions(precision=precision, opt_batch=min(4, args.engine_max_batch),
                                max_batch=args.engine_max_batch)
        engine = build_engine(onnx_for_engine, onnx_for_engine.with_suffix(".engine"), options)
        print(f"TensorRT engine: {engine}")


def _at_input_size(model, size: int):
    """The same weights at another frame size: the backbone is fully convolutional and pools globally,
    so only the exported input shape changes (for timing at 224 px; accuracy was measured at the
    trained size)."""
    from dataclasses import replace

    from avbind.models.network import AVBindNet

    config = replace(model.config, video=replace(model.config.video, input_size=size))
    resized = AVBindNet(config)
    resized.load_state_dict(model.state_dict())
    resized.class_names, resized.verb_names, resized.noun_names = model.class_names, model.verb_names, model.noun_names
    return resized.eval()


def add_export_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the step model to ONNX (and int8 QDQ, TensorRT)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: the shipped avbind-s)")
    source.add_argument("--config", help="export a configuration with random weights (for timing)")
    source.add_argument("--from-onnx", type=Path, metavar="FILE",
                        help="skip the export: write --triton / --tensorrt from this step-model ONNX file")
    p.add_argument("--out", type=Path, default=Path("avbind-s.onnx"), help="ONNX file to write")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--input-size", type=int, help="export at this frame size (px, multiple of 32) instead")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch (streams per call) the graph accepts")
    p.add_argument("--simplify", action="store_true", help="simplify with onnxslim if it is installed")
    p.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx, statically quantized (QDQ)")
    p.add_argument("--calibration-data", type=Path, help="AVE-layout folder for int8 calibration (default: avsynth)")
    p.add_argument("--calibration-clips", type=int, default=16, help="validation clips used for calibration")
    p.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (needs TensorRT and a GPU)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="TensorRT precision without --int8")
    p.add_argument("--engine-max-batch", type=int, default=16, help="TensorRT optimisation profile's largest batch")
    p.add_argument("--triton", type=Path, metavar="DIR",
                   help="also write a Triton model repository (sequence batcher, implicit state) here")
    p.add_argument("--triton-sequences", type=int, default=64, help="Triton: max_candidate_sequences (cameras "
                                                                       "batched at once)")
    p.add_argument("--triton-idle-s", type=float, default=60.0, help="Triton: a sequence idle this long is dropped")
    p.add_argument("--triton-max-batch", type=int, default=16, help="Triton: max_batch_size")
    p.set_defaults(func=_export)
