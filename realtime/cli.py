"""The ``avbind`` command. Each subcommand lives beside the code it drives and registers itself
through an ``add_cli(subparsers)`` function; this file only assembles them.

Torch-backed subcommands import torch when they run, never at import time, so a deployment with
only ONNX Runtime installed still gets a working ``avbind``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    try:
        return version("avbind")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _require_torch(command: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(f"avbind {command} needs PyTorch: pip install 'avbind[train]' (torch 2.13.0 CPU works)")


def _models(args: argparse.Namespace) -> int:
    """List configurations at once, without torch; ``--cost`` builds each model to count its cost.

    Listing is read from the configuration table alone (the runtime has it too); parameters, MACs
    and state size come from running one real step under torch's FLOP counter, which takes
    seconds per model and needs the ``[train]`` extra, so only when asked.
    """
    from avbind.models.config import CONFIGS, DEFAULT_CONFIG

    names = args.names or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"avbind models: unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    if args.cost:
        _require_torch("models --cost")
        from avbind.models.summary import summarize

        summaries = [summarize(CONFIGS[n]) for n in names]
        if args.json:
            print(json.dumps([{**asdict(s), "state_bytes": s.state_bytes} for s in summaries], indent=2))
            return 0
    else:
        configs = [CONFIGS[n] for n in names]
        if args.json:
            print(json.dumps([{"name": c.name, "input_size": c.video.input_size, "n_mels": c.features.n_mels,
                               "audio_window_s": c.audio_window_s, "step_rate_hz": c.step_rate_hz} for c in configs],
                             indent=2))
            return 0
        print(f"{'model':<14}{'input':>8}{'mels':>6}{'audio':>8}{'steps':>8}")
        for c in configs:
            star = "*" if c.name == DEFAULT_CONFIG else " "
            print(f"{c.name + star:<14}{c.video.input_size:>6}px{c.features.n_mels:>6}{c.audio_window_s:>7.2f}s"
                  f"{c.step_rate_hz:>6.0f}/s")
        print("* default. `avbind models --cost` adds parameters, MACs per step and state size (needs torch).")
        return 0
    header = f"{'model':<14}{'params':>9}{'MACs/step':>11}{'state':>24}{'input':>8}{'mels':>6}{'audio':>8}{'steps':>8}"
    print(header)
    for s in summaries:
        star = "*" if s.name == DEFAULT_CONFIG else " "
        state = f"{s.state_tensors} tensors {s.state_bytes / 1024:.1f} KiB"
        print(
            f"{s.name + star:<14}{s.parameters / 1e6:>8.2f}M{s.macs_per_step / 1e6:>10.1f}M{state:>24}"
            f"{s.input_size:>6}px{s.n_mels:>6}{s.audio_window_s:>7.2f}s{s.step_rate_hz:>6.0f}/s"
        )
    print("* default. MACs and state are per stream and step; state is float32.")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from avbind.realtime.bench import format_bench, run_bench, write_report

    if args.cluster:
        try:
            import ray  # noqa: F401
        except ImportError:
            sys.exit("avbind bench --cluster needs Ray: pip install 'avbind[cluster]'")
        from avbind.realtime.cluster.bench import format_cluster_bench, run_cluster_bench

        report = run_cluster_bench(None if args.model is None else str(args.model), seconds=args.engine_seconds or 8.0,
                                   max_streams=args.max_streams)
        print(format_cluster_bench(report))
        if args.out:
            write_report(report, args.out)
            print(f"JSON: {args.out}")
        return 0

    model, int8, checkpoint = args.model, args.int8, args.checkpoint
    if model is None:
        from avbind.models.weights import shipped

        model = shipped(".onnx")
        int8 = int8 or _optional(lambda: shipped(".int8.onnx"))
        if checkpoint is None and not args.no_torch:
            checkpoint = _optional(lambda: shipped(".pt")) if _has_torch() else None
    report = run_bench(model, int8, checkpoint, batches=tuple(args.batch), steps=args.steps, threads=args.threads,
                       compare=tuple(args.compare or ()))
    print(format_bench(report))
    if args.engine_seconds > 0:
        import tempfile

        from avbind.realtime.bench import format_engine_bench, run_engine_bench

        with tempfile.TemporaryDirectory() as workdir:
            report["engine"] = run_engine_bench(model, workdir, seconds=args.engine_seconds,
                                                max_streams=args.max_streams, threads=args.threads)
        print(format_engine_bench(report["engine"]))
    if args.out:
        write_report(report, args.out)
        print(f"JSON: {args.out}")
    return 0


def _optional(get):
    try:
        return get()
    except FileNotFoundError:
        return None


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avbind", description="Real-time audio-visual event recognition."
    )
    parser.add_argument("--version", action="version", version=f"avbind {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    models = sub.add_parser("models", help="list model configurations (--cost: parameters, MACs per step, state size)")
    models.add_argument("names", nargs="*", help="configurations to show (default: all)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--cost", action="store_true",
                        help="build each model and count parameters, MACs per step and state (needs torch; slow)")
    models.set_defaults(func=_models)

    from avbind.models.data import avsynth  # numpy, PyAV and OpenCV only: no torch

    data = sub.add_parser("data", help="make or inspect training data")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    avsynth.add_cli(data_sub)
    from avbind.models.data.check import add_check_cli  # numpy and csv only: no torch

    add_check_cli(data_sub)
    from avbind.models.commands import add_prepare_cli  # torch-free: prepares with numpy and PyAV

    add_prepare_cli(data_sub)

    from avbind.export.commands import add_export_cli
    from avbind.models.commands import add_eval_cli, add_train_cli
    from avbind.realtime.commands import add_cli as add_engine_cli

    add_engine_cli(sub)
    from avbind.realtime.teach import add_cli as add_teach_cli  # torch is imported only by teach train

    add_teach_cli(sub)
    from avbind.realtime.views.dashboard import add_cli as add_dashboard_cli  # aiohttp is imported only when it runs

    add_dashboard_cli(sub)
    from avbind.realtime.cluster.commands import add_cli as add_cluster_cli  # Ray is imported only by serve

    add_cluster_cli(sub)
    add_train_cli(sub)
    add_eval_cli(sub)
    add_export_cli(sub)

    bench = sub.add_parser("bench", help="per-step latency of each backend against baselines (JSON out)")
    bench.add_argument("--model", type=Path, help="fp32 ONNX model (default: the shipped avbind-s)")
    bench.add_argument("--int8", type=Path, help="int8 QDQ ONNX model to compare (default: the shipped one)")
    bench.add_argument("--checkpoint", type=Path, help="checkpoint for the PyTorch eager baseline")
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    bench.add_argument("--compare", type=Path, action="append", metavar="MODEL",
                       help="another fp32 ONNX model to time in the same run (repeatable), e.g. avbind-s beside "
                            "an exported avbind-lite0")
    bench.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="streams per call to time")
    bench.add_argument("--steps", type=int, default=200, help="timed steps per figure")
    bench.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core)")
    bench.add_argument("--engine-seconds", type=float, default=8.0,
                       help="seconds per full-engine run (end-to-end latency, concurrent streams); 0 skips them")
    bench.add_argument("--max-streams", type=int, default=32, help="most concurrent streams to try")
    bench.add_argument("--cluster", action="store_true",
                       help="instead: avbind serve on a local Ray cluster, 1 worker x all cores against one worker "
                            "per core, control round trip and worker-death recovery (needs avbind[cluster])")
    bench.add_argument("--out", type=Path, help="write the JSON report here")
    bench.set_defaults(func=_bench)
    return parser


def one_line(err: BaseException) -> str:
    """The first line of an error's message (libraries' messages run to paragraphs), else its type."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except ImportError as err:  # an optional part (torch for train, TensorRT) is not installed
        if args.verbose:
            raise
        print(f"avbind {args.command}: error: {err.name or one_line(err)} is not installed ({one_line(err)})",
              file=sys.stderr)
        return 1
    except (OSError, ValueError, RuntimeError) as err:
        # A bad model, media or data folder is the user's to fix and the message names it; a
        # traceback would bury it. -v keeps the traceback for reports.
        if args.verbose:
            raise
        print(f"avbind {args.command}: error: {one_line(err)} (-v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
