"""``avbind serve`` (the cluster driver) and ``avbind streams add|remove|list`` (its control client)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

DEFAULT_CONTROL = "tcp://127.0.0.1:5557"


def serve_command(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit("avbind serve needs Ray: pip install 'avbind[cluster]'")
    from avbind.realtime.cluster.control import ControlError
    from avbind.realtime.cluster.serve import Cluster, ServeSettings
    from avbind.realtime.commands import DEFAULT_ENDPOINT, _StopSignals, curve_from_args, stream_settings
    from avbind.realtime.engine import EngineSettings
    from avbind.realtime.publish.security import warn_if_open

    videos, audios, names = args.video or [], args.audio or [], args.name or []
    pairs = [(v, audios[i] if i < len(audios) else None) for i, v in enumerate(videos)]
    pairs += [(None, a) for a in audios[len(videos):]]
    if len(names) > len(pairs):
        sys.exit(f"avbind serve: {len(names)} --name for {len(pairs)} streams")
    names += [f"stream{i}" for i in range(len(names), len(pairs))]
    settings = ServeSettings(
        workers=args.workers, capacity=args.capacity, threads=args.threads or 1,
        model=None if args.model is None else str(args.model), backend=args.backend,
        publish=args.publish or [DEFAULT_ENDPOINT], control=args.control, ray_address=args.ray_address,
        num_cpus=args.num_cpus, max_restarts=args.max_restarts, bind_host=args.bind_host,
        engine=EngineSettings(batch_wait_s=args.batch_wait_ms / 1000), stream=stream_settings(args),
        speed=args.speed, reconnect_for_s=args.reconnect_for_s, curve=curve_from_args(args),
        curve_allow=None if args.curve_allow is None else str(args.curve_allow),
    )
    warn_if_open(settings.publish, settings.curve)
    cluster = Cluster(settings)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    # After ray.init, which installs its own SIGTERM handler (it exits with status 15 at once).
    with _StopSignals() as signals:
        try:
            print(f"avbind serve: {args.workers} worker(s) x {settings.capacity} streams; control on "
                  f"{cluster.control.bound}; publishing on {', '.join(cluster.proxy.bound)}", file=sys.stderr,
                  flush=True)
            for name, (video, audio) in zip(names, pairs, strict=True):
                try:
                    placed = cluster.add(name, video, audio)
                    print(f"  {name} -> worker {placed['worker']}", file=sys.stderr, flush=True)
                except (ValueError, RuntimeError, ControlError) as err:
                    print(f"avbind serve: {err}", file=sys.stderr, flush=True)
            until = None if args.seconds is None else time.monotonic() + args.seconds
            while signals.received is None and (until is None or time.monotonic() < until):
                time.sleep(0.1)
        finally:
            print("avbind serve: stopping workers", file=sys.stderr, flush=True)
            cluster.stop()
    return signals.exit_code if signals.exit_code is not None else 0


def streams_command(args: argparse.Namespace) -> int:
    from avbind.realtime.cluster.control import ControlError, request

    command: dict[str, Any] = {"cmd": args.action}
    if args.action == "add":
        if not args.video and not args.audio:
            sys.exit("avbind streams add: give --video, --audio or both")
        command.update(name=args.name, video=args.video, audio=args.audio)
    elif args.action == "remove":
        command["name"] = args.name
    try:
        reply = request(args.control, command, timeout_s=args.timeout)
    except ControlError as err:
        sys.exit(f"avbind streams {args.action}: {err}")
    if args.action == "list":
        if args.json:
            print(json.dumps({"streams": reply["streams"], "workers": reply["workers"]}, indent=2))
        else:
            print(format_list(reply))
    elif args.action == "add":
        print(f"{reply['stream']}: on worker {reply['worker']} (pid {reply['pid']})")
    else:
        print(f"{reply['stream']}: removed")
    return 0


def format_list(reply: dict[str, Any]) -> str:
    lines = [f"{'stream':<20}{'worker':<8}{'pid':>8}  {'state':<13}{'steps':>7}{'steps/s':>9}  message"]
    for s in reply["streams"]:
        lines.append(f"{s['name'][:19]:<20}{s['worker'] or '-':<8}{s['pid'] or '-':>8}  {s['state']:<13}"
                     f"{s['steps']:>7}{s['steps_per_s']:>9.1f}  {s['message'][:60]}")
    lines.append("")
    lines.append(f"{'worker':<8}{'pid':>8}  {'alive':<6}{'streams':>8}{'load':>7}{'steps/s':>9}{'restarts':>9}")
    for w in reply["workers"]:
        lines.append(f"{w['worker']:<8}{w['pid'] or '-':>8}  {'yes' if w['alive'] else 'no':<6}{w['streams']:>8}"
                     f"{w['load']:>7.2f}{w['steps_per_s']:>9.1f}{w['restarts']:>9}")
    return "\n".join(lines)


def add_cli(sub: argparse._SubParsersAction) -> None:
    from avbind.realtime.commands import (
        DEFAULT_ENDPOINT,
        _add_engine_options,
        _check_engine_options,
        _number,
        _stream_name,
        add_curve_server_options,
    )

    serve = sub.add_parser("serve", help="run streams on a Ray cluster of engine workers behind one endpoint "
                                         "(needs avbind[cluster])")
    serve.add_argument("--workers", type=_number(minimum=1, integer=True), default=2,
                       help="engine workers (Ray actors)")
    serve.add_argument("--capacity", type=_number(minimum=1, integer=True), default=8,
                       help="streams per worker; a full worker passes a stream on (see avbind bench's streams held)")
    serve.add_argument("--control", default=DEFAULT_CONTROL, help="ZeroMQ endpoint of the control socket")
    serve.add_argument("--publish", action="append", metavar="ENDPOINT",
                       help=f"endpoint(s) subscribers connect to (default {DEFAULT_ENDPOINT})")
    serve.add_argument("--ray-address", help="join a running cluster (auto or HOST:PORT) instead of starting one")
    serve.add_argument("--num-cpus", type=_number(minimum=1, integer=True),
                       help="CPUs of the local cluster started without --ray-address (default: all)")
    serve.add_argument("--bind-host", help="address workers reach the driver at (default: 127.0.0.1 for a local "
                                           "cluster, this node's address on a joined one)")
    serve.add_argument("--max-restarts", type=_number(minimum=-1, integer=True), default=-1,
                       help="times Ray restarts a worker that died (-1: always)")
    serve.add_argument("--video", action="append", metavar="SRC", help="a stream to start with (repeatable)")
    serve.add_argument("--audio", action="append", metavar="SRC", help="its audio, as for avbind run (repeatable)")
    serve.add_argument("--name", action="append", type=_stream_name, help="stream names, in order")
    serve.add_argument("--speed", type=_number(minimum=0, allow_inf=True), default=1.0,
                       help="play files this many times real time")
    serve.add_argument("--reconnect-for-s", type=_number(minimum=0, allow_inf=True), default=120.0, metavar="S",
                       help="how long a network source keeps reconnecting (s)")
    serve.add_argument("--seconds", type=_number(above=0), help="stop after this long (default: at SIGINT/SIGTERM)")
    _add_engine_options(serve)
    add_curve_server_options(serve)
    for action in serve._actions:  # --threads means per worker here
        if action.dest == "threads":
            action.help = "ONNX Runtime intra-op threads per worker, also the CPUs Ray reserves for it (0: 1)"
    serve.set_defaults(func=_check_engine_options(serve, serve_command))

    streams = sub.add_parser("streams", help="add, remove or list the streams of a running avbind serve")
    actions = streams.add_subparsers(dest="action", required=True)
    for name, text in (("add", "start a stream on the cluster"), ("remove", "stop a stream"),
                       ("list", "every stream and worker")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--control", default=DEFAULT_CONTROL, help="avbind serve's control endpoint")
        p.add_argument("--timeout", type=_number(above=0), default=30.0, help="seconds to wait for the reply")
        if name in ("add", "remove"):
            p.add_argument("--name", required=True, type=_stream_name, help="stream name")
        if name == "add":
            p.add_argument("--video", metavar="SRC", help="file, URL, camera index or 'synthetic'")
            p.add_argument("--audio", metavar="SRC", help="'mic', a file or URL")
        if name == "list":
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=streams_command)
