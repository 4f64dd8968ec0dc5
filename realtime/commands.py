"""``avbind demo``, ``avbind run``, ``avbind live`` and ``avbind listen``: the engine's commands.

All of them run without torch: the shipped ONNX model through ONNX Runtime (or TensorRT where an
engine was built), so a deployment with only the runtime installed has every one of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from avbind.realtime.backends import BACKENDS, Backend, create_backend
from avbind.realtime.engine import Engine, EngineSettings, percentiles_ms
from avbind.realtime.postprocess.events import DetectorSettings
from avbind.realtime.postprocess.stream_outputs import OutputSettings
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.publish.subscriber import Subscriber, format_message
from avbind.realtime.scheduler.stream import StreamSettings
from avbind.realtime.views.terminal import TerminalView

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def open_backend(model: Path | None, backend: str, threads: int = 0) -> Backend:
    if model is None:
        from avbind.models.weights import default_onnx

        model = default_onnx()
    options: dict[str, Any] = {}
    if threads and backend in ("auto", "onnxruntime") and Path(model).suffix == ".onnx":
        options["intra_op_threads"] = threads
    try:
        return create_backend(model, backend, **options)
    except (OSError, ValueError, RuntimeError) as err:
        sys.exit(f"avbind: cannot open model {model} with backend {backend}: {err}")


def open_publisher(endpoints: list[str], fallback: bool) -> Publisher:
    """Bind the publisher; the demo falls back to a free port rather than fail on a busy default."""
    try:
        return Publisher(endpoints)
    except ValueError as err:
        if not fallback:
            sys.exit(f"avbind: {err}")
        publisher = Publisher("tcp://127.0.0.1:*")
        print(f"{err}; publishing on {publisher.bound[0]} instead", file=sys.stderr)
        return publisher


def stream_settings(args: argparse.Namespace) -> StreamSettings:
    detector = DetectorSettings(on=args.event_on, off=args.event_off, min_duration_s=args.event_min_s,
                                merge_gap_s=args.event_gap_s)
    outputs = OutputSettings(segment_s=args.segment_s, detector=detector, publish_steps=args.publish_steps)
    return StreamSettings(audio_wait_s=args.audio_wait_s, max_lag_s=args.max_lag_s, outputs=outputs)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="model file (.onnx, .engine or .pt; default: the shipped avbind-s)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="inference backend")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    p.add_argument("--segment-s", type=float, default=1.0, help="seconds per published segment prediction")
    p.add_argument("--publish-steps", action="store_true", help="also publish per-step scores (topic .../step)")
    p.add_argument("--event-on", type=float, default=DetectorSettings.on, help="score that opens an event")
    p.add_argument("--event-off", type=float, default=DetectorSettings.off, help="score below which it closes")
    p.add_argument("--event-min-s", type=float, default=DetectorSettings.min_duration_s,
                   help="shortest event reported (s)")
    p.add_argument("--event-gap-s", type=float, default=DetectorSettings.merge_gap_s,
                   help="dips shorter than this do not end an event (s)")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="let a due step wait this long for other streams' steps to share its backend call")
    p.add_argument("--audio-wait-s", type=float, default=StreamSettings.audio_wait_s,
                   help="how long a step waits for late audio before running degraded (s)")
    p.add_argument("--max-lag-s", type=float, default=StreamSettings.max_lag_s,
                   help="steps older than this are skipped when the engine falls behind (s)")


# demo ----------------------------------------------------------------------------------------
def demo_command(args: argparse.Namespace) -> int:
    from avbind.realtime.sources.synthetic import SyntheticSource

    backend = open_backend(args.model, args.backend, args.threads)
    publisher = open_publisher([args.publish], fallback=args.publish == DEFAULT_ENDPOINT)
    endpoint = publisher.bound[0]
    engine = Engine(backend, publisher, EngineSettings(batch_wait_s=args.batch_wait_ms / 1000))
    segments: list[dict[str, Any]] = []
    engine.listeners.append(lambda m: segments.append(m) if m["type"] == "segment" else None)
    view = TerminalView(Subscriber(endpoint, types=("segment", "event", "status")))
    time.sleep(0.2)  # let the subscriber connect before the first message (ZeroMQ's slow joiner)
    print(f"avbind demo: synthetic audio-visual stream -> {backend.info.name} on {engine.backend_name}")
    print(f"publishing on {endpoint} (try `avbind listen {endpoint}` in another terminal); "
          f"{args.seconds:g} s, Ctrl-C to stop early")
    source = SyntheticSource(seed=args.seed, speed=args.speed)
    engine.start()
    stream = engine.add_stream("demo", [source], stream_settings(args))
    started = time.monotonic()
    try:
        view.run(until=started + args.seconds / args.speed)
    except KeyboardInterrupt:
        print("stopped")
    engine.stop()
    view.subscriber.close()
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
def run_command(args: argparse.Namespace) -> int:
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
    backend = open_backend(args.model, args.backend, args.threads)
    sample_rate = backend.info.features.sample_rate
    try:
        streams = [(n, stream_sources(v, a, sample_rate, args.speed)) for n, (v, a) in zip(names, pairs, strict=True)]
    except ValueError as err:
        sys.exit(f"avbind run: {err}")
    publisher = open_publisher(args.publish or [DEFAULT_ENDPOINT], fallback=False)
    engine = Engine(backend, publisher, EngineSettings(batch_wait_s=args.batch_wait_ms / 1000))
    view = None if args.quiet else TerminalView(Subscriber(publisher.bound[0]))
    time.sleep(0.2)  # ZeroMQ's slow joiner: let the view connect first
    print(f"avbind run: {len(streams)} stream(s) -> {backend.info.name} on {engine.backend_name}; "
          f"publishing on {', '.join(publisher.bound)}", file=sys.stderr)
    engine.start()
    for name, sources in streams:
        engine.add_stream(name, sources, stream_settings(args))
    until = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        if view is not None:
            view.run(until=until, stop_when_ended=True)
        else:
            while engine.streams and (until is None or time.monotonic() < until):
                time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    engine.stop()
    publisher.close()
    for stream in engine.finished_streams.values():
        latency = percentiles_ms(list(stream.latencies))
        shown = "n/a" if latency["p50"] is None else f"p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms"
        drops = ", ".join(f"{k} {v}" for k, v in stream.drops().items() if v) or "none"
        print(f"{stream.name}: {stream.counters.steps} steps, latency {shown}, drops: {drops}", file=sys.stderr)
    return 0


# live ----------------------------------------------------------------------------------------
def live_command(args: argparse.Namespace) -> int:
    from avbind.realtime.sources.microphone import MicrophoneSource
    from avbind.realtime.sources.webcam import WebcamSource
    from avbind.realtime.views.overlay import OverlayView, display_available

    backend = open_backend(args.model, args.backend, args.threads)
    publisher = open_publisher([args.publish], fallback=args.publish == DEFAULT_ENDPOINT)
    engine = Engine(backend, publisher, EngineSettings(batch_wait_s=args.batch_wait_ms / 1000))
    camera = int(args.camera) if str(args.camera).isdigit() else args.camera
    sources = [WebcamSource(camera)]
    if not args.no_mic:
        mic = args.mic
        sources.append(MicrophoneSource(int(mic) if mic and mic.isdigit() else mic,
                                        sample_rate=backend.info.features.sample_rate))
    window = display_available() and not args.no_window
    view = None if window else TerminalView(Subscriber(publisher.bound[0]))
    print(f"avbind live: camera {args.camera}{'' if args.no_mic else ' + microphone'} -> {backend.info.name} on "
          f"{engine.backend_name}; publishing on {publisher.bound[0]}"
          f"{'' if window else ' (no display: terminal view)'}", file=sys.stderr)
    engine.start()
    stream = engine.add_stream("live", sources, stream_settings(args))
    until = None if args.seconds is None else time.monotonic() + args.seconds
    try:
        if window:
            overlay = OverlayView(stream)
            engine.listeners.append(overlay.on_message)
            overlay.run(until=until)
        else:
            view.run(until=until, stop_when_ended=True)
    except KeyboardInterrupt:
        pass
    engine.stop()
    publisher.close()
    return 0


# listen --------------------------------------------------------------------------------------
def listen_command(args: argparse.Namespace) -> int:
    types = tuple(args.topic) if args.topic else ("segment", "event", "status")
    subscriber = Subscriber(args.endpoint, stream=args.stream, types=types)
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    count = 0
    try:
        while deadline is None or time.monotonic() < deadline:
            received = subscriber.receive(0.2)
            if received is None:
                continue
            if received.missed:
                print(f"({received.missed} messages lost before this one)")
            print(json.dumps(received.message) if args.json else format_message(received.message), flush=True)
            count += 1
            if args.count and count >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the synthetic audio-visual stream through the full engine (no hardware)")
    demo.add_argument("--seconds", type=float, default=30.0, help="stream time to run before the summary")
    demo.add_argument("--speed", type=float, default=1.0, help="play the synthetic stream this many times real time")
    demo.add_argument("--seed", type=int, default=2026, help="seed of the synthetic stream")
    demo.add_argument("--publish", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to publish on")
    demo.add_argument("--json", type=Path, help="write the summary as JSON here")
    _add_engine_options(demo)
    demo.set_defaults(func=demo_command)

    run = sub.add_parser("run", help="recognize files, cameras, microphones and network streams; publish over ZeroMQ")
    run.add_argument("--video", action="append", metavar="SRC",
                     help="file, URL (rtsp/udp/srt/http), camera index or 'synthetic'; one stream each (repeatable)")
    run.add_argument("--audio", action="append", metavar="SRC",
                     help="'mic', 'mic:DEVICE', a file or URL; pairs with the --video at the same position, "
                          "extra ones are audio-only streams (repeatable)")
    run.add_argument("--name", action="append", help="stream names, in order (default stream0, stream1, ...)")
    run.add_argument("--publish", action="append", default=None, metavar="ENDPOINT",
                     help=f"ZeroMQ endpoint(s) to bind (default {DEFAULT_ENDPOINT})")
    run.add_argument("--speed", type=float, default=1.0, help="play files this many times real time")
    run.add_argument("--seconds", type=float, help="stop after this long (default: when every stream ended)")
    run.add_argument("--quiet", action="store_true", help="do not print predictions")
    _add_engine_options(run)
    run.set_defaults(func=run_command)

    live = sub.add_parser("live", help="webcam + microphone with an overlay window (terminal view without a display)")
    live.add_argument("--camera", default="0", help="camera index or device path")
    live.add_argument("--mic", help="sounddevice input device (name or index; default: the system default)")
    live.add_argument("--no-mic", action="store_true", help="video only")
    live.add_argument("--no-window", action="store_true", help="terminal view even with a display")
    live.add_argument("--publish", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to publish on")
    live.add_argument("--seconds", type=float, help="stop after this long")
    _add_engine_options(live)
    live.set_defaults(func=live_command)

    listen = sub.add_parser("listen", help="print what an avbind engine publishes")
    listen.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT, help="ZeroMQ endpoint to connect to")
    listen.add_argument("--stream", help="only this stream")
    listen.add_argument("--topic", action="append", choices=("segment", "event", "status", "step"),
                        help="message types to show (repeatable; default segment, event, status)")
    listen.add_argument("--json", action="store_true", help="print raw JSON messages")
    listen.add_argument("--seconds", type=float, help="stop after this long")
    listen.add_argument("--count", type=int, help="stop after this many messages")
    listen.set_defaults(func=listen_command)



