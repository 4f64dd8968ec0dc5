"""``avbind demo``, ``avbind run``, ``avbind live`` and ``avbind listen``: the engine's commands.

All of them run without torch: the shipped ONNX model through ONNX Runtime (or TensorRT where an
engine was built), so a deployment with only the runtime installed has every one of them.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avbind.realtime.backends import BACKENDS, Backend, create_backend
from avbind.realtime.engine import Engine, EngineSettings, percentiles_ms
from avbind.realtime.postprocess.events import DetectorSettings
from avbind.realtime.postprocess.stream_outputs import OutputSettings
from avbind.realtime.publish.messages import TYPES, check_stream_name
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.publish.security import Curve
from avbind.realtime.publish.subscriber import Subscriber, format_message
from avbind.realtime.scheduler.stream import StreamSettings
from avbind.realtime.views.terminal import TerminalView

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def model_opener(backend: str, threads: int = 0) -> Callable[[Path], Backend]:
    """How a command opens a model file: at start, and again for every hot swap (Engine.open_model),
    so a swapped-in model runs on the same --backend with the same --threads."""
    def open_model(model: Path) -> Backend:
        options: dict[str, Any] = {}
        if threads and backend in ("auto", "onnxruntime") and Path(model).suffix == ".onnx":
            options["intra_op_threads"] = threads
        return create_backend(model, backend, **options)

    return open_model


def open_backend(model: Path | None, backend: str, threads: int = 0) -> Backend:
    """Open the model or exit with one line: a bad model file or a missing backend is a user error, not a bug."""
    if model is None:
        from avbind.models.weights import default_onnx

        model = default_onnx()
    try:
        return model_opener(backend, threads)(Path(model))
    except ImportError as err:  # an optional backend package (TensorRT, torch) is missing: a message, not a traceback
        sys.exit(f"avbind: cannot open model {model} with backend {backend}: {err.name or err} is not installed")
    except (OSError, ValueError, RuntimeError) as err:
        sys.exit(f"avbind: cannot open model {model} with backend {backend}: {err}")


def curve_from_args(args: argparse.Namespace) -> Curve | None:
    """The server key pair of ``--curve-secret``, or exit with one line saying what is wrong with it."""
    from avbind.realtime.publish.security import CurveKeyError, check_allow_dir, server_curve

    secret, allow = getattr(args, "curve_secret", None), getattr(args, "curve_allow", None)
    if allow is not None and secret is None:
        sys.exit(f"avbind {args.command}: --curve-allow needs --curve-secret (the server's key pair)")
    try:
        if allow is not None:
            check_allow_dir(allow)
        return None if secret is None else server_curve(secret)
    except CurveKeyError as err:
        sys.exit(f"avbind {args.command}: {err}")


def open_publisher(endpoints: list[str], fallback: bool, args: argparse.Namespace | None = None) -> Publisher:
    """Bind the publisher; the demo falls back to a free port rather than fail on a busy default."""
    from avbind.realtime.publish.security import warn_if_open

    curve = curve_from_args(args) if args is not None else None
    allow = getattr(args, "curve_allow", None)
    try:
        publisher = Publisher(endpoints, curve=curve, curve_allow=allow)
    except ValueError as err:
        if not fallback:
            sys.exit(f"avbind: {err}")
        publisher = Publisher("tcp://127.0.0.1:*", curve=curve, curve_allow=allow)
        print(f"{err}; publishing on {publisher.bound[0]} instead", file=sys.stderr)
    warn_if_open(publisher.endpoints, curve)
    return publisher


def open_snapshot(publisher: Publisher, args: argparse.Namespace, backend: Backend, engine: Engine) -> Any:
    """The late joiners' snapshot socket of ``--snapshot``, or None."""
    publisher.model = {"model": backend.info.name, "backend": engine.backend_name,
                       "classes": list(backend.info.event_names)}
    if not getattr(args, "snapshot", None):
        return None
    from avbind.realtime.publish.snapshot import SnapshotServer

    try:
        server = SnapshotServer(publisher, args.snapshot, publisher.curve, getattr(args, "curve_allow", None))
    except ValueError as err:
        sys.exit(f"avbind {args.command}: {err}")
    print(f"snapshots for late joiners on {server.bound}", file=sys.stderr)
    return server


def client_curve_from_args(args: argparse.Namespace) -> Curve | None:
    """A subscriber's keys from ``--curve-server`` and ``--curve-secret`` (listen, dashboard), None
    without them, or exit with one line: half a CURVE setup would silently get nothing."""
    if args.curve_server is None and args.curve_secret is None:
        return None
    from avbind.realtime.publish.security import CurveKeyError, client_curve

    if args.curve_server is None or args.curve_secret is None:
        sys.exit(f"avbind {args.command}: CURVE needs both --curve-server SERVER.key and "
                 "--curve-secret CLIENT.key_secret")
    try:
        return client_curve(args.curve_server, args.curve_secret)
    except CurveKeyError as err:
        sys.exit(f"avbind {args.command}: {err}")


def add_curve_client_options(p: argparse.ArgumentParser) -> None:
    """A subscriber's CURVE options; :func:`client_curve_from_args` reads them."""
    p.add_argument("--curve-server", type=Path, metavar="FILE", help="the engine's public CURVE key (SERVER.key)")
    p.add_argument("--curve-secret", type=Path, metavar="FILE", help="this subscriber's key pair (.key_secret)")


def add_curve_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", metavar="ENDPOINT",
                   help="also answer late joiners with every stream's current state here (avbind listen --snapshot)")
    p.add_argument("--curve-secret", type=Path, metavar="FILE",
                   help="encrypt what is published with this CURVE key pair (NAME.key_secret of avbind keys generate)")
    p.add_argument("--curve-allow", type=Path, metavar="DIR",
                   help="only subscribers whose public key (.key) is in DIR may connect (read at each connection)")


def _number(
    *, above: float | None = None, minimum: float | None = None, maximum: float | None = None,
    integer: bool = False, allow_inf: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type=`` that parses a number and checks its range at parse time.

    Bad values then fail with argparse's one-line ``argument --x: ...`` error (exit 2) before the
    model loads, instead of a traceback minutes later or, for nan, silently wrong behaviour.
    """
    bounds = [f"> {above:g}" if above is not None else "", f">= {minimum:g}" if minimum is not None else "",
              f"<= {maximum:g}" if maximum is not None else ""]
    wanted = (("an integer" if integer else "a number" if allow_inf else "a finite number")
              + "".join(f" {b}" for b in bounds if b and not b.startswith("<="))
              + (" (inf allowed)" if allow_inf else ""))
    if maximum is not None:
        wanted += f" and <= {maximum:g}" if (above is not None or minimum is not None) else f" <= {maximum:g}"

    def parse(text: str) -> float:
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        ok = not math.isnan(value) and (allow_inf or math.isfinite(value))
        ok = ok and (above is None or value > above) and (minimum is None or value >= minimum)
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = "int" if integer else "float"
    return parse


def _stream_name(text: str) -> str:
    """argparse ``type=`` for ``--name``: names become ZeroMQ topics, so a bad one fails at parse time."""
    try:
        return check_stream_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _check_engine_options(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int],
                          ) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so options that constrain each other are checked (argparse error, exit 2) first.

    ``--event-off <= --event-on`` cannot be a per-option ``type=`` check since either may come first.
    """
    @functools.wraps(func)
    def checked(args: argparse.Namespace) -> int:
        if args.event_off > args.event_on:
            parser.error(f"argument --event-off: must be <= --event-on ({args.event_on:g}), got {args.event_off:g}")
        return func(args)

    return checked


def stream_settings(args: argparse.Namespace) -> StreamSettings:
    """The per-stream settings of the engine options; ValueError names the first bad value."""
    if args.event_off > args.event_on:
        raise ValueError(f"--event-off ({args.event_off:g}) must be <= --event-on ({args.event_on:g})")
    detector = DetectorSettings(on=args.event_on, off=args.event_off, min_duration_s=args.event_min_s,
                                merge_gap_s=args.event_gap_s)
    outputs = OutputSettings(segment_s=args.segment_s, detector=detector, publish_steps=args.publish_steps)
    return StreamSettings(audio_wait_s=args.audio_wait_s, max_lag_s=args.max_lag_s, outputs=outputs)


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The engine-wide settings of the options (``--batch-wait-ms``; ``--preview-fps`` where the command has it)."""
    return EngineSettings(batch_wait_s=args.batch_wait_ms / 1000, preview_fps=getattr(args, "preview_fps", 0.0))


def _add_preview_option(p: argparse.ArgumentParser) -> None:
    """``--preview-fps``, for the commands that run an engine here (not ``serve``, whose workers publish
    through a proxy that carries two-frame messages only)."""
    p.add_argument("--preview-fps", type=_number(minimum=0, maximum=30), default=0.0, metavar="N",
                   help="also publish a small JPEG of each stream's latest frame at most N times a second on "
                        "avbind/<stream>/preview, for avbind dashboard (default 0: off)")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model file (.onnx, .engine or .pt; default: the shipped avbind-s)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="inference backend")
    p.add_argument("--threads", type=_number(minimum=0, integer=True), default=0,
                   help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--segment-s", type=_number(above=0), default=1.0, help="seconds per published segment prediction")
    p.add_argument("--publish-steps", action="store_true", help="also publish per-step scores (topic .../step)")
    p.add_argument("--event-on", type=_number(above=0, maximum=1), default=DetectorSettings.on,
                   help="score that opens an event")
    p.add_argument("--event-off", type=_number(above=0, maximum=1), default=DetectorSettings.off,
                   help="score below which it closes (<= --event-on)")
    p.add_argument("--event-min-s", type=_number(minimum=0), default=DetectorSettings.min_duration_s,
                   help="shortest event reported (s)")
    p.add_argument("--event-gap-s", type=_number(minimum=0), default=DetectorSettings.merge_gap_s,
                   help="dips shorter than this do not end an event (s)")
    p.add_argument("--batch-wait-ms", type=_number(minimum=0), default=0.0,
                   help="let a due step wait this long for other streams' steps to share its backend call")
    p.add_argument("--audio-wait-s", type=_number(minimum=0), default=StreamSettings.audio_wait_s,
                   help="how long a step waits for late audio before running degraded (s)")
    p.add_argument("--max-lag-s", type=_number(above=0), default=StreamSettings.max_lag_s,
                   help="steps older than this are skipped when the engine falls behind (s)")


# demo ----------------------------------------------------------------------------------------
def demo_command(args: argparse.Namespace) -> int:
    from avbind.models.data.avsynth import CLASS_NAMES
    from avbind.realtime.sources.synthetic import SyntheticSource

    backend = open_backend(args.model, args.backend, args.threads)
    publisher = open_publisher([args.publish], fallback=args.publish == DEFAULT_ENDPOINT, args=args)
    endpoint = publisher.bound[0]
    engine = Engine(backend, publisher, engine_settings(args))
    snapshots = open_snapshot(publisher, args, backend, engine)
    segments: list[dict[str, Any]] = []
    engine.listeners.append(lambda m: segments.append(m) if m["type"] == "segment" else None)
    source = SyntheticSource(seed=args.seed, speed=args.speed)
    view = TerminalView(Subscriber(endpoint, types=("segment", "event", "status"), curve=publisher.viewer_curve()),
                        truth=source.truth,
                        class_names=[*CLASS_NAMES, "background"])
    time.sleep(0.2)  # let the subscriber connect before the first message (ZeroMQ's slow joiner)
    print(f"avbind demo: synthetic audio-visual stream -> {backend.info.name}")
    print(f"  on {engine.backend_name}")
    print(f"publishing on {endpoint}; {args.seconds:g} s, Ctrl-C to stop early")
    print(f"  (try `avbind listen {endpoint}` in another terminal)")
    engine.start()
    stream = engine.add_stream("demo", [source], stream_settings(args))
    started = time.monotonic()
    try:
        # --seconds counts stream played: playback starts once the first clip is rendered and encoded.
        while source.counters.frames == 0 and not source.stopped and time.monotonic() < started + 30:
            time.sleep(0.01)
        started = time.monotonic()
        view.run(until=started + args.seconds / args.speed)
    except KeyboardInterrupt:
        print("stopped")
    engine.stop()
    view.subscriber.close()
    if snapshots is not None:
        snapshots.close()
    publisher.close()
    summary = demo_summary(segments, source, stream, engine, view, time.monotonic() - started)
    print(format_demo_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def demo_summary(segments, source, stream, engine: Engine, view: TerminalView, wall_s: float) -> dict[str, Any]:
    scored = [(m["class_index"], source.truth(m["segment"])) for m in segments]
    correct = sum(p == t for p, t in scored)
    received = [r.message for r in view.received]
    return {
        "wall_s": round(wall_s, 2),
        "backend": engine.backend_name,
        "segments": len(scored),
        "segment_accuracy": correct / len(scored) if scored else None,
        "events_started": sum(m["type"] == "event" and m["event"] == "start" for m in received),
        "steps": stream.counters.steps,
        "latency_ms": percentiles_ms(list(stream.latencies)),
        "drops": stream.drops(),
        "messages_received": len(received),
        "messages_lost": view.subscriber.missed,
    }


def format_demo_summary(s: dict[str, Any]) -> str:
    acc = "n/a" if s["segment_accuracy"] is None else f"{100 * s['segment_accuracy']:.1f}%"
    lat = s["latency_ms"]
    latency = "n/a" if lat["p50"] is None else f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
    drops = ", ".join(f"{k} {v}" for k, v in s["drops"].items() if v) or "none"
    return "\n".join([
        "", "summary",
        f"  segments scored      {s['segments']}, accuracy against the synthetic ground truth {acc}",
        f"  events started       {s['events_started']}",
        f"  steps                {s['steps']} in {s['wall_s']:.1f} s",
        f"  latency              capture -> publish {latency}",
        f"  drops                {drops}",
        f"  subscriber           {s['messages_received']} messages received, {s['messages_lost']} lost",
        f"  backend              {s['backend']}",
    ])


# run -----------------------------------------------------------------------------------------
EXIT_FAILED = 1  # a stream ended with a source error
EXIT_SIGINT = 128 + 2  # stopped by Ctrl-C (SIGINT), after the clean shutdown and summary
EXIT_SIGTERM = 128 + 15  # stopped by SIGTERM, after the clean shutdown and summary


class _StopSignals:
    """SIGINT and SIGTERM set a flag the run loop polls, instead of raising inside whatever runs.

    A KeyboardInterrupt can land anywhere (a sleep before the ``try``, a ZeroMQ poll, a listener),
    and the default SIGTERM kills the process with no ``ended`` status and no summary. A flag makes
    both a clean shutdown; a second signal while shutting down exits at once.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum

    @property
    def exit_code(self) -> int | None:
        if self.received is None:
            return None
        return EXIT_SIGTERM if self.received == signal.SIGTERM else EXIT_SIGINT


def _print_run_problems(message: dict[str, Any]) -> None:
    """With ``--quiet`` only predictions are hidden: source warnings and errors still go to stderr."""
    if message["type"] == "status" and message.get("level") in ("warning", "error"):
        print(f"[{message['stream']}] {message['level']}: {message['message']}", file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    """Run every stream until each has ended, ``--seconds`` passed, or SIGINT / SIGTERM arrived.

    Exit status, so that scripts and supervisors can tell a failed run from a finished one:
    0 when every stream completed; 1 when any stream reported a source error (every stream still
    runs to its end and the summary says which failed and why); 130 after SIGINT (Ctrl-C) and 143
    after SIGTERM, both after the same clean shutdown (``ended`` statuses published, summary printed).
    """
    from avbind.realtime.sources.open_source import stream_sources

    videos, audios = args.video or [], args.audio or []
    if not videos and not audios:
        sys.exit("avbind run: give at least one --video or --audio source")
    pairs = [(v, audios[i] if i < len(audios) else None) for i, v in enumerate(videos)]
    pairs += [(None, a) for a in audios[len(videos):]]
    names = args.name or []
    if len(names) > len(pairs):
        sys.exit(f"avbind run: {len(names)} --name for {len(pairs)} streams")
    names += [f"stream{i}" for i in range(len(names), len(pairs))]
    if len(set(names)) != len(names):
        sys.exit(f"avbind run: stream names must differ, got {names}")
    if args.watch_model and args.model is None:
        sys.exit("avbind run: --watch-model needs --model FILE (the file to watch)")
    backend = open_backend(args.model, args.backend, args.threads)
    sample_rate = backend.info.features.sample_rate
    try:
        streams = [(n, stream_sources(v, a, sample_rate, args.speed, args.reconnect_for_s))
                   for n, (v, a) in zip(names, pairs, strict=True)]
    except ValueError as err:
        sys.exit(f"avbind run: {err}")
    publisher = open_publisher(args.publish or [DEFAULT_ENDPOINT], fallback=False, args=args)
    engine = Engine(backend, publisher, engine_settings(args))
    engine.open_model = model_opener(args.backend, args.threads)
    snapshots = open_snapshot(publisher, args, backend, engine)
    problems: dict[str, str] = {}  # stream -> its last source error
    # A refused model swap (a status carrying "model") is an error of the new file, not of the stream.
    engine.listeners.append(lambda m: problems.__setitem__(m["stream"], m["message"])
                            if m["type"] == "status" and m.get("level") == "error" and "model" not in m else None)
    if args.quiet:
        engine.listeners.append(_print_run_problems)
    view = None if args.quiet else TerminalView(Subscriber(publisher.bound[0], curve=publisher.viewer_curve()))
    with _StopSignals() as signals:
        time.sleep(0.2)  # ZeroMQ's slow joiner: let the view connect first
        print(f"avbind run: {len(streams)} stream(s) -> {backend.info.name} on {engine.backend_name}; "
              f"publishing on {', '.join(publisher.bound)}", file=sys.stderr)
        engine.start()
        for name, sources in streams:
            if signals.received is None:
                engine.add_stream(name, sources, stream_settings(args))
        until = None if args.seconds is None else time.monotonic() + args.seconds
        watcher = None
        if args.watch_model:
            from avbind.realtime.model_swap import ModelWatcher

            watcher = ModelWatcher(engine, args.model, report=lambda line: print(f"avbind run: {line}",
                                                                                 file=sys.stderr, flush=True))
            watcher.start()

        def done() -> bool:
            return signals.received is not None or not engine.streams

        if view is not None:
            view.run(until=until, done=done)
        else:
            while not done() and (until is None or time.monotonic() < until):
                time.sleep(0.1)
        if watcher is not None:
            watcher.stop()
        engine.stop()
        if view is not None:
            view.drain()
            view.subscriber.close()
        time.sleep(0.2)  # the publisher drops what is queued on close: let the ``ended`` statuses go out
        if snapshots is not None:
            snapshots.close()
        publisher.close()
        failed = _summarise_run(engine, problems)
    if signals.exit_code is not None:
        return signals.exit_code
    return EXIT_FAILED if failed else 0


def _summarise_run(engine: Engine, problems: dict[str, str]) -> bool:
    """One line per stream on stderr, saying which failed and why; True if any failed."""
    failed = False
    for stream in engine.finished_streams.values():
        latency = percentiles_ms(list(stream.latencies))
        shown = "n/a" if latency["p50"] is None else f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms"
        drops = ", ".join(f"{k} {v}" for k, v in stream.drops().items() if v) or "none"
        outcome = "ok"
        if stream.counters.source_errors or stream.name in problems:
            failed = True
            outcome = f"FAILED ({problems.get(stream.name, 'source error')})"
        print(f"{stream.name}: {outcome}, {stream.counters.steps} steps, latency {shown}, drops: {drops}",
              file=sys.stderr)
    return failed


# devices -------------------------------------------------------------------------------------
def devices_command(args: argparse.Namespace) -> int:
    from avbind.realtime.sources.devices import describe_devices, format_devices

    report = describe_devices()
    print(json.dumps(report, indent=2) if args.json else format_devices(report))
    return 0


# live ----------------------------------------------------------------------------------------
def _live_teach_record(args: argparse.Namespace, window: bool) -> tuple[Path, Path]:
    """``live --teach``'s first half: record takes with the same camera and microphone."""
    from avbind.realtime.sources.microphone import MicrophoneSource
    from avbind.realtime.sources.webcam import WebcamSource
    from avbind.realtime.teach import HINT, SAMPLE_RATE, WindowScreen, record, terminal_screen

    try:
        import torch  # noqa: F401  (teach train runs on torch; fail before anyone records for nothing)
    except ImportError:
        sys.exit("avbind live --teach trains with PyTorch: pip install 'avbind[train,pretrained]'")
    classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    folder = args.teach_dir or Path("avbind-teach")
    if not classes and args.teach_takes > 0:
        sys.exit("avbind live --teach: say what to teach with --classes, e.g. --classes \"knock,kettle,wave\"")
    if args.teach_takes > 0:
        camera = int(args.camera) if str(args.camera).isdigit() else args.camera
        sources = [WebcamSource(camera, realtime=True)]  # a file given as the camera plays as one
        if not args.no_mic:
            sources.append(MicrophoneSource(int(args.mic) if args.mic and args.mic.isdigit() else args.mic,
                                            sample_rate=SAMPLE_RATE))
        print(f"avbind live --teach: recording {', '.join(classes)} and background into {folder} ({HINT})",
              file=sys.stderr, flush=True)
        kept = record(folder, sources, classes, args.teach_seconds, args.teach_takes,
                      screen=WindowScreen if window else terminal_screen)
        print(f"avbind live --teach: kept {len(kept)} takes", file=sys.stderr, flush=True)
    return folder, folder / "model.onnx"


def _live_teach_train(engine: Engine, folder: Path, out: Path, threads: int, steps: int | None) -> threading.Thread:
    """``live --teach``'s second half, beside the running engine: train, then swap the model in.

    A failed training or a refused model is printed and leaves the running model in place."""
    def run() -> None:
        from avbind.models.config import TeachConfig
        from avbind.models.teach import teach

        started = time.monotonic()
        try:
            given = {"threads": threads, "steps": steps}
            report = teach(folder, out, TeachConfig(**{k: v for k, v in given.items() if v}))
            swap = engine.swap_model(out)
        except (ValueError, RuntimeError, OSError) as err:
            print(f"avbind live --teach: {err}; the running model stays", file=sys.stderr, flush=True)
            return
        accuracy = report.validation.get(report.audio_init, {}).get("fusion", {}).get("segment_accuracy")
        shown = "" if accuracy is None else f", validation segment accuracy {accuracy:.0%}"
        print(f"avbind live --teach: trained in {time.monotonic() - started:.0f} s{shown}; now running "
              f"{swap.name} ({', '.join(swap.classes)})", file=sys.stderr, flush=True)

    thread = threading.Thread(target=run, name="avbind-teach-train", daemon=True)
    thread.start()
    return thread


def live_command(args: argparse.Namespace) -> int:
    from avbind.realtime.sources.microphone import MicrophoneSource
    from avbind.realtime.sources.webcam import WebcamSource
    from avbind.realtime.views.overlay import OverlayView, display_available

    teaching = None
    if args.teach:
        teaching = _live_teach_record(args, not args.no_window and display_available())
    backend = open_backend(args.model, args.backend, args.threads)
    publisher = open_publisher([args.publish], fallback=args.publish == DEFAULT_ENDPOINT, args=args)
    engine = Engine(backend, publisher, engine_settings(args))
    engine.open_model = model_opener(args.backend, args.threads)  # so engine.swap_model(file) can follow training
    snapshots = open_snapshot(publisher, args, backend, engine)
    camera = int(args.camera) if str(args.camera).isdigit() else args.camera
    sources = [WebcamSource(camera, realtime=True)]  # a file given as the camera plays as one
    if not args.no_mic:
        mic = args.mic
        sources.append(MicrophoneSource(int(mic) if mic and mic.isdigit() else mic,
                                        sample_rate=backend.info.features.sample_rate))
    window = not args.no_window and display_available()  # --no-window never touches HighGUI
    view = None if window else TerminalView(Subscriber(publisher.bound[0], curve=publisher.viewer_curve()))
    print(f"avbind live: camera {args.camera}{'' if args.no_mic else ' + microphone'} -> {backend.info.name} on "
          f"{engine.backend_name}; publishing on {publisher.bound[0]}"
          f"{'' if window else ' (no display: terminal view)'}", file=sys.stderr)
    # Ctrl-C sets a flag the view polls, as in ``avbind run``: a KeyboardInterrupt landing inside the
    # engine's or the window's code could leave a lock held and the shutdown waiting on it.
    with _StopSignals() as signals:
        def stopped() -> bool:
            return signals.received is not None

        engine.start()
        stream = engine.add_stream("live", sources, stream_settings(args))
        if teaching is not None:
            _live_teach_train(engine, *teaching, args.threads, args.teach_steps)
        until = None if args.seconds is None else time.monotonic() + args.seconds
        if window:
            overlay = OverlayView(stream)
            engine.listeners.append(overlay.on_message)
            engine.listeners.append(_print_source_problems)  # the terminal view would have shown them
            try:
                overlay.run(until=until, done=stopped)
            except RuntimeError as err:  # the window process failed to open a window after all
                print(f"avbind live: {err}; terminal view", file=sys.stderr)
                view = TerminalView(Subscriber(publisher.bound[0], curve=publisher.viewer_curve()))
                view.run(until=until, stop_when_ended=True, done=stopped)
        else:
            view.run(until=until, stop_when_ended=True, done=stopped)
        engine.stop()
    if snapshots is not None:
        snapshots.close()
    publisher.close()
    return 0


def _print_source_problems(message: dict[str, Any]) -> None:
    """Engine listener of the window mode: source warnings and errors also go to stderr, not only the window."""
    if message.get("type") == "status" and message.get("level") in ("warning", "error"):
        print(f"avbind live: {message.get('stream')}: {message.get('message')}", file=sys.stderr, flush=True)


# keys ----------------------------------------------------------------------------------------
def keys_command(args: argparse.Namespace) -> int:
    from avbind.realtime.publish.security import generate_keys

    try:
        public, secret = generate_keys(args.folder, args.name)
    except ValueError as err:
        sys.exit(f"avbind keys generate: {err}")
    print(f"public key (give to the other side, or put in a --curve-allow folder): {public}")
    print(f"secret key (keep private, mode 0600): {secret}")
    return 0


# listen --------------------------------------------------------------------------------------
def listen_command(args: argparse.Namespace) -> int:
    """Print what a publisher sends; malformed messages are skipped and counted, never fatal.

    Human lines end with the message's age so a viewer can tell a stale feed from a live one.
    """
    import zmq

    types = tuple(args.topic) if args.topic else ("segment", "event", "status")
    curve = client_curve_from_args(args)
    try:
        subscriber = Subscriber(args.endpoint, stream=args.stream, types=types, curve=curve)
    except (ValueError, zmq.ZMQError) as err:
        sys.exit(f"avbind listen: cannot connect to {args.endpoint!r}: {err}")
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    count = 0
    try:
        if args.snapshot:
            shown = _listen_late(args, subscriber, curve, deadline)
            count = 0 if shown is None else shown
        while not args.snapshot and (deadline is None or time.monotonic() < deadline):
            received = subscriber.receive(0.2)
            if received is None:
                continue
            if received.missed:
                print(f"({received.missed} messages lost before this one)")
            # json.dumps escapes control characters (ensure_ascii), format_message escapes them itself
            print(json.dumps(received.message) if args.json else format_message(received.message), flush=True)
            count += 1
            if args.count and count >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    if subscriber.malformed:
        print(f"avbind listen: skipped {subscriber.malformed} malformed message(s)", file=sys.stderr)
    return 0


def _listen_late(args: argparse.Namespace, subscriber: Subscriber, curve: Curve | None, deadline: float | None,
                 ) -> int:
    """``listen --snapshot``: the current state first, then the live messages it does not cover."""
    from avbind.realtime.publish.snapshot import late_join

    try:
        snapshot, live = late_join(subscriber, args.snapshot, curve)
    except TimeoutError as err:
        sys.exit(f"avbind listen: {err}")
    if args.json:
        print(json.dumps({"snapshot": snapshot}), flush=True)
    else:
        print(f"state of {len(snapshot['streams'])} stream(s) ({snapshot.get('model', {}).get('model', '?')}):")
        for _name, state in sorted(snapshot["streams"].items()):
            for message in (state["status"], state["segment"], *state["open_events"]):
                if message is not None and message["type"] in subscriber.types:
                    print(f"  {format_message(message)}")
        print("live:", flush=True)
    count = 0
    for message in live:
        if deadline is not None and time.monotonic() >= deadline:
            break
        if message is None:
            continue
        print(json.dumps(message) if args.json else format_message(message), flush=True)
        count += 1
        if args.count and count >= args.count:
            break
    return count


def add_cli(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the synthetic audio-visual stream through the full engine (no hardware)")
    demo.add_argument("--seconds", type=_number(above=0), default=30.0, help="stream time to run before the summary")
    demo.add_argument("--speed", type=_number(above=0), default=1.0,
                      help="play the synthetic stream this many times real time")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the synthetic stream")
    demo.add_argument("--publish", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to publish on")
    demo.add_argument("--json", type=Path, help="write the summary as JSON here")
    _add_engine_options(demo)
    _add_preview_option(demo)
    add_curve_server_options(demo)
    demo.set_defaults(func=_check_engine_options(demo, demo_command))

    run = sub.add_parser("run", help="recognize files, cameras, microphones and network streams; publish over ZeroMQ")
    run.add_argument("--video", action="append", metavar="SRC",
                     help="file, URL (rtsp/udp/srt/http), camera index or 'synthetic'; one stream each (repeatable)")
    run.add_argument("--audio", action="append", metavar="SRC",
                     help="'mic', 'mic:DEVICE', a file or URL; pairs with the --video at the same position, "
                          "extra ones are audio-only streams (repeatable)")
    run.add_argument("--name", action="append", type=_stream_name,
                     help="stream names, in order (default stream0, stream1, ...)")
    run.add_argument("--publish", action="append", default=None, metavar="ENDPOINT",
                     help=f"ZeroMQ endpoint(s) to bind (default {DEFAULT_ENDPOINT})")
    run.add_argument("--speed", type=_number(minimum=0, allow_inf=True), default=1.0,
                     help="play files this many times real time (0 or inf: as fast as possible)")
    run.add_argument("--seconds", type=_number(above=0), help="stop after this long (default: when every stream ended)")
    run.add_argument("--quiet", action="store_true", help="do not print predictions")
    run.add_argument("--reconnect-for-s", type=_number(minimum=0, allow_inf=True), default=120.0, metavar="S",
                     help="how long a network source that lost its stream keeps reconnecting before its stream "
                          "ends (s; inf: forever; default 120)")
    run.add_argument("--watch-model", action="store_true",
                     help="swap to the --model file whenever it is replaced (write the new file elsewhere, then "
                          "rename it over the old one); streams keep running, a model that does not fit is refused")
    _add_engine_options(run)
    _add_preview_option(run)
    add_curve_server_options(run)
    run.set_defaults(func=_check_engine_options(run, run_command))

    live = sub.add_parser("live", help="webcam + microphone with an overlay window (terminal view without a display)")
    live.add_argument("--camera", default="0", help="camera index or device path")
    live.add_argument("--mic", help="sounddevice input device (name or index; default: the system default)")
    live.add_argument("--no-mic", action="store_true", help="video only")
    live.add_argument("--no-window", action="store_true", help="terminal view even with a display")
    live.add_argument("--publish", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to publish on")
    live.add_argument("--seconds", type=_number(above=0), help="stop after this long")
    live.add_argument("--teach", action="store_true",
                      help="first record takes of --classes (avbind teach record), then recognise with the running "
                           "model while avbind teach train fine-tunes on them, and swap the result in when it is done")
    live.add_argument("--classes", help='--teach: comma-separated class names, e.g. "knock,kettle,wave"')
    live.add_argument("--teach-dir", type=Path,
                      help="--teach: the takes folder (default: avbind-teach/ here); takes already there are used too")
    live.add_argument("--teach-seconds", type=_number(above=0), default=10.0, help="--teach: seconds per take (10)")
    live.add_argument("--teach-takes", type=int, default=3,
                      help="--teach: takes of each class and of background (3; 0: train on the folder as it is)")
    live.add_argument("--teach-steps", type=int, help="--teach: optimisation steps (default: teach train's)")
    _add_engine_options(live)
    _add_preview_option(live)
    add_curve_server_options(live)
    live.set_defaults(func=_check_engine_options(live, live_command))

    devices = sub.add_parser("devices", help="list the cameras and microphones --video and --audio can open")
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")
    devices.set_defaults(func=devices_command)

    listen = sub.add_parser("listen", help="print what an avbind engine publishes")
    listen.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to connect to")
    listen.add_argument("--stream", type=_stream_name, help="only this stream")
    listen.add_argument("--topic", action="append", choices=TYPES,
                        help="message types to show (repeatable; default segment, event, status; preview shows "
                             "each picture's size, not the picture)")
    listen.add_argument("--json", action="store_true", help="print raw JSON messages")
    listen.add_argument("--seconds", type=_number(above=0), help="stop after this long")
    listen.add_argument("--count", type=_number(minimum=1, integer=True), help="stop after this many messages")
    listen.add_argument("--snapshot", metavar="ENDPOINT",
                        help="the engine's --snapshot endpoint: print every stream's current state first, then "
                             "the live messages after it (no gap, no duplicate)")
    add_curve_client_options(listen)

    keys = sub.add_parser("keys", help="CURVE key pairs for encrypted, authenticated publishing")
    keys_sub = keys.add_subparsers(dest="keys_action", required=True)
    generate = keys_sub.add_parser("generate", help="write DIR/NAME.key (public) and DIR/NAME.key_secret (0600)")
    generate.add_argument("folder", type=Path)
    generate.add_argument("--name", required=True, help="file name of the pair (e.g. server, alice)")
    generate.set_defaults(func=keys_command)
    listen.set_defaults(func=listen_command)



