"""``avbind dashboard``: every stream of an engine in a browser page, live.

One process subscribes to an engine's published endpoint (any engine: ``run``, ``demo``, ``live``
or ``serve``; CURVE like ``avbind listen``), keeps per stream what a person watching wants (state
and source health, the current segment's top classes, the events of the last minute, latency and
drops, the latest preview picture) and serves it over HTTP with aiohttp: ``/`` the page, ``/ws``
the live state over a WebSocket, ``/state`` the same as one JSON document, ``/preview/<stream>.jpg``
the newest picture (engines run with ``--preview-fps N``). The page is plain HTML, CSS and JS
shipped in this package (no CDN: dashboards run on machines without internet access).

It is built on the published messages only, never on engine internals, so it survives what a
subscriber sees: an engine restarting (``seq`` starts again at 0: that stream's state starts
over), streams appearing, streams ending (shown ``ended``, then dropped after ``--forget-s``),
an engine that is not there yet, and malformed or hostile messages (skipped and counted). With
``--snapshot`` it asks the engine's late-joiner socket for the current state at once (and again
after a restart) instead of waiting for the next messages.

HTTP binds loopback by default: the page shows what the cameras see. Any other address needs
``--http-public``; on loopback, requests whose ``Host`` is not a loopback name are refused (a web
page elsewhere cannot reach it by DNS rebinding), and a WebSocket from another origin is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from avbind.realtime.publish.messages import TYPES
from avbind.realtime.publish.security import Curve
from avbind.realtime.publish.subscriber import MalformedMessageError, parse_frames

if TYPE_CHECKING:  # aiohttp is an optional extra: imported only when the dashboard runs
    from aiohttp import web

log = logging.getLogger(__name__)

DEFAULT_HTTP = "127.0.0.1:8080"
WINDOW_S = 60.0  # s of events on each stream's timeline
METRICS_MIN_S = 0.9  # s: a status sooner than this after the last one keeps that one's rates (heartbeats: 1 s)
STALE_S = 5.0  # s without any message before a stream is shown "silent" (heartbeats come each second)
FORGET_S = 60.0  # s an ended or silent stream stays on the page
MAX_STREAMS = 256  # streams held; a publisher inventing names cannot grow the dashboard beyond this
MAX_EVENTS = 200  # events held per stream
MAX_PREVIEW_BYTES = 2 << 20  # a bigger picture is refused (ours are tens of KB)
PUSH_EVERY_S = 0.25  # s: the most often one page is sent the state
SNAPSHOT_RETRY_S = 3.0  # s between snapshot requests while the engine's snapshot socket does not answer
INSTALL_HINT = "avbind dashboard needs aiohttp: pip install 'avbind[dashboard]'"
STATIC = {"dashboard.js": "application/javascript", "dashboard.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# State -------------------------------------------------------------------------------------
@dataclass
class _Stream:
    """What the dashboard knows of one stream, from its messages only."""

    name: str
    last_seen: float  # wall clock (dashboard's) of its last message
    status: dict[str, Any] | None = None
    segment: dict[str, Any] | None = None
    events: dict[int, dict[str, Any]] = field(default_factory=dict)  # event id -> timeline entry
    preview: dict[str, Any] | None = None
    jpeg: bytes | None = None
    seq: dict[str, tuple[int, float]] = field(default_factory=dict)  # type -> (seq, publish_time) last applied
    clock: float | None = None  # wall time minus stream time, from the last segment: places events in time
    metrics: dict[str, Any] = field(default_factory=dict)  # fps, steps/s, latency of the last heartbeat
    metrics_at: float | None = None  # publish time of the status they came from
    missed: int = 0  # messages lost in transit (seq gaps)
    restarts: int = 0
    ended_at: float | None = None


class DashboardState:
    """Every stream's picture, fed message by message; no I/O, so it is tested without sockets.

    ``seq`` tells three things apart per stream and type: the next message (``seq`` higher: any gap
    is a loss, counted); a copy of one already applied, as late joining delivers around the
    snapshot (``seq`` not higher, sent no later: dropped); and a restarted engine (``seq`` not higher
    but sent later: the stream starts over instead of ignoring everything until ``seq`` catches up).
    """

    def __init__(self, window_s: float = WINDOW_S, stale_s: float = STALE_S, forget_s: float = FORGET_S,
                 max_streams: int = MAX_STREAMS) -> None:
        self.window_s, self.stale_s, self.forget_s, self.max_streams = window_s, stale_s, forget_s, max_streams
        self.streams: dict[str, _Stream] = {}
        self.model: dict[str, Any] = {}
        self.version = 0  # bumped on every change, so pages are sent only what is new
        self.last_message: float | None = None
        self.received = 0
        self.malformed = 0
        self.duplicates = 0
        self.refused_streams = 0  # messages of streams beyond max_streams
        self.restarts = 0
        self.snapshots = 0

    # Feeding -------------------------------------------------------------------------------
    def apply(self, message: dict[str, Any], data: bytes | None = None, now: float | None = None) -> str:
        """Apply one parsed message (``data``: a preview's JPEG). Returns ``applied``, ``duplicate``,
        ``restart`` (applied, and the stream started over) or ``refused``."""
        now = time.time() if now is None else now
        name, kind = message["stream"], message["type"]
        stream = self.streams.get(name)
        if stream is None:
            if len(self.streams) >= self.max_streams:
                self.refused_streams += 1
                return "refused"
            stream = self.streams[name] = _Stream(name, now)
        outcome = self._sequence(stream, kind, message)
        if outcome == "duplicate":
            self.duplicates += 1
            return outcome
        self.received += 1
        self.last_message = stream.last_seen = now
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(stream, message, data, now)
        self.version += 1
        return outcome

    def malformed_message(self) -> None:
        self.malformed += 1
        self.version += 1

    def _sequence(self, stream: _Stream, kind: str, message: dict[str, Any]) -> str:
        seq, sent = message["seq"], message["publish_time"]
        last = stream.seq.get(kind)
        outcome = "applied"
        if last is not None and seq <= last[0]:
            if sent <= last[1]:
                return "duplicate"
            self._start_over(stream)
            outcome = "restart"
        elif last is not None:
            stream.missed += seq - last[0] - 1
        stream.seq[kind] = (seq, sent)
        return outcome

    def _start_over(self, stream: _Stream) -> None:
        """The engine behind ``stream`` restarted: nothing it said before describes the new run."""
        stream.restarts += 1
        self.restarts += 1
        stream.seq.clear()
        stream.events.clear()  # their ends will never come
        stream.segment = stream.status = stream.preview = stream.jpeg = None
        stream.ended_at = stream.clock = None

    def _on_status(self, stream: _Stream, message: dict[str, Any], data: bytes | None, now: float) -> None:
        stream.status = message
        swapped = message.get("model")
        if isinstance(swapped, dict):  # the status of a model swap names what runs now
            self.model = {"model": swapped.get("name"), "backend": message.get("backend"),
                          "classes": swapped.get("classes")}
        # Rates and latency are over the interval since the stream's previous status: a source's
        # note right after a heartbeat covers a few ms (often no step: latency null). Keep the
        # heartbeat's figures then, so the page does not flicker to "-" at every note.
        sent = message["publish_time"]
        if stream.metrics_at is None or sent - stream.metrics_at >= METRICS_MIN_S or sent < stream.metrics_at:
            stream.metrics = {k: message.get(k) for k in ("fps", "steps_per_s", "latency_ms")}
            stream.metrics_at = sent
        if message.get("state") == "ended":
            stream.ended_at = now
            for event in stream.events.values():  # the engine closes them before it ends; in case it did not
                if event["t1"] is None:
                    event["t1"], event["cut"] = message["capture_time"], True
        else:
            stream.ended_at = None

    def _on_segment(self, stream: _Stream, message: dict[str, Any], data: bytes | None, now: float) -> None:
        stream.segment = message
        if _finite(message.get("end")):
            stream.clock = message["capture_time"] - message["end"]

    def _wall(self, stream: _Stream, t: Any, fallback: float) -> float:
        """Wall time of stream time ``t`` (no later than ``fallback``, the message's capture time)."""
        if stream.clock is None or not _finite(t):
            return fallback
        return min(fallback, t + stream.clock)

    def _on_event(self, stream: _Stream, message: dict[str, Any], data: bytes | None, now: float) -> None:
        key = message.get("event_id")
        if not isinstance(key, int):
            return
        capture = message["capture_time"]
        entry = stream.events.get(key)
        if entry is None:
            if message.get("event") == "end" and _finite(message.get("start")) and _finite(message.get("end")):
                t0 = self._wall(stream, message["start"], capture - (message["end"] - message["start"]))
            else:
                t0 = self._wall(stream, message.get("start"), capture)
            entry = stream.events[key] = {"event_id": key, "t0": t0, "t1": None, "cut": False}
        entry.update({k: message.get(k) for k in ("label", "class_index", "start", "end", "confidence", "peak")})
        if message.get("event") == "end":
            entry["t1"] = max(entry["t0"], self._wall(stream, message.get("end"), capture))
        while len(stream.events) > MAX_EVENTS:
            del stream.events[min(stream.events)]

    def _on_preview(self, stream: _Stream, message: dict[str, Any], data: bytes | None, now: float) -> None:
        if data is None or len(data) > MAX_PREVIEW_BYTES or not data.startswith(b"\xff\xd8"):
            self.malformed += 1  # not a JPEG: keep the last good picture
            return
        stream.preview, stream.jpeg = message, data

    def apply_snapshot(self, snapshot: dict[str, Any], now: float | None = None) -> None:
        """The engine's late-joiner snapshot: fill in what the live feed has not said yet, and
        mark its ``seq`` as covered so the live copies around it are recognised as duplicates."""
        now = time.time() if now is None else now
        if not isinstance(snapshot, dict) or not isinstance(snapshot.get("streams"), dict):
            raise ValueError("not an avbind snapshot")
        self.snapshots += 1
        if isinstance(snapshot.get("model"), dict):
            self.model = snapshot["model"]
        taken = snapshot.get("time") if _finite(snapshot.get("time")) else now
        for name, state in snapshot["streams"].items():
            if not isinstance(state, dict) or not isinstance(name, str):
                continue
            stream = self.streams.get(name)
            if stream is None:
                if len(self.streams) >= self.max_streams:
                    self.refused_streams += 1
                    continue
                stream = self.streams[name] = _Stream(name, now)
            messages = [m for m in (state.get("status"), state.get("segment"), *(state.get("open_events") or []))
                        if isinstance(m, dict) and isinstance(m.get("seq"), int) and m.get("type") in TYPES]
            for message in messages:
                last = stream.seq.get(message["type"])
                if message["type"] == "event":
                    if message.get("event_id") not in stream.events and (last is None or message["seq"] > last[0]):
                        self._on_event(stream, message, None, now)
                elif last is None or message["seq"] > last[0]:
                    getattr(self, f"_on_{message['type']}")(stream, message, None, now)
            for kind, seq in (state.get("seq") or {}).items():
                last = stream.seq.get(kind)
                if isinstance(seq, int) and (last is None or seq > last[0]):
                    stream.seq[kind] = (seq, taken)
        self.version += 1

    def expire(self, now: float | None = None) -> None:
        """Forget streams ended or silent for ``forget_s`` and events older than the timeline."""
        now = time.time() if now is None else now
        for name in [n for n, s in self.streams.items()
                     if now - (s.ended_at if s.ended_at is not None else s.last_seen) > self.forget_s]:
            del self.streams[name]
        horizon = now - self.window_s
        for stream in self.streams.values():
            for key in [k for k, e in stream.events.items() if e["t1"] is not None and e["t1"] < horizon]:
                del stream.events[key]
        self.version += 1

    # Reading -------------------------------------------------------------------------------
    def jpeg(self, name: str) -> bytes | None:
        stream = self.streams.get(name)
        return None if stream is None else stream.jpeg

    def describe(self, now: float | None = None) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data (ages and states relative to ``now``)."""
        now = time.time() if now is None else now
        age = None if self.last_message is None else round(now - self.last_message, 3)
        return {
            "time": round(now, 3), "window_s": self.window_s, "model": self.model,
            "engine": {"last_message_age_s": age, "connected": age is not None and age <= self.stale_s},
            "counters": {"received": self.received, "malformed": self.malformed, "duplicates": self.duplicates,
                         "restarts": self.restarts, "refused_streams": self.refused_streams,
                         "snapshots": self.snapshots},
            "streams": [self._describe_stream(s, now) for _, s in sorted(self.streams.items())],
        }

    def _describe_stream(self, stream: _Stream, now: float) -> dict[str, Any]:
        status = stream.status or {}
        silent = stream.ended_at is None and now - stream.last_seen > self.stale_s
        state = status.get("state", "unknown")
        segment = stream.segment
        preview = stream.preview
        sources = status.get("sources")
        drops = status.get("drops") if isinstance(status.get("drops"), dict) else {}
        return {
            "name": stream.name,
            "state": "silent" if silent else state,
            "engine_state": state,
            "level": status.get("level"),
            "message": status.get("message", ""),
            "sources": [str(s) for s in sources] if isinstance(sources, list) else [],
            "backend": status.get("backend"),
            "worker": status.get("worker"),
            "fps": stream.metrics.get("fps"), "steps": status.get("steps"),
            "steps_per_s": stream.metrics.get("steps_per_s"),
            "latency_ms": stream.metrics.get("latency_ms") or {"p50": None, "p99": None},
            "drops": {k: v for k, v in drops.items() if v},
            "lost": stream.missed,
            "restarts": stream.restarts,
            "last_message_age_s": round(now - stream.last_seen, 3),
            "ended_age_s": None if stream.ended_at is None else round(now - stream.ended_at, 3),
            "segment": None if segment is None else {
                **{k: segment.get(k) for k in ("label", "class_index", "confidence", "is_background", "start", "end",
                                               "verb", "noun", "seq", "degraded_steps")},
                "top": _scores(segment.get("top"))},
            "events": sorted(({k: e.get(k) for k in ("event_id", "label", "class_index", "start", "end", "t0",
                                                      "t1", "confidence", "peak", "cut")}
                              for e in stream.events.values() if e["t1"] is None or e["t1"] >= now - self.window_s),
                             key=lambda e: e["t0"]),
            "preview": None if preview is None else {
                "seq": preview["seq"], "width": preview.get("width"), "height": preview.get("height"),
                "bytes": preview.get("bytes"), "time": preview.get("time"),
                "age_s": round(now - preview["publish_time"], 3)},
        }


def _scores(top: Any) -> list[dict[str, Any]]:
    """A segment's top classes as the page draws them, whatever the publisher put there."""
    if not isinstance(top, list):
        return []
    return [{"label": str(t.get("label", "?")), "score": min(1.0, max(0.0, t["score"])) if _finite(t.get("score"))
             else 0.0} for t in top[:10] if isinstance(t, dict)]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# HTTP address ------------------------------------------------------------------------------
def parse_http(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port); ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http must be HOST:PORT (e.g. {DEFAULT_HTTP}), got {text!r}")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine only: ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _request_host(host_header: str) -> str:
    """The host name of a ``Host`` header (``[::1]:8080`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


# Server ------------------------------------------------------------------------------------
class Dashboard:
    """The subscriber, the snapshot requests and the HTTP side, on one asyncio loop."""

    def __init__(self, connect: str, snapshot: str | None = None, curve: Curve | None = None,
                 state: DashboardState | None = None, loopback_only: bool = True) -> None:
        self.connect, self.snapshot_endpoint, self.curve = connect, snapshot, curve
        self.state = state or DashboardState()
        self.loopback_only = loopback_only
        self._changed = asyncio.Event()
        self._snapshot_wanted = asyncio.Event()
        self._rendered: tuple[int, str] = (-1, "")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def rendered(self) -> str:
        """The state as JSON, made once per change however many pages watch."""
        if self._rendered[0] != self.state.version:
            self._rendered = (self.state.version, json.dumps(self.state.describe()))
        return self._rendered[1]

    # ZeroMQ --------------------------------------------------------------------------------
    async def subscribe(self) -> None:
        """Receive everything under ``avbind/`` forever; ZeroMQ reconnects to a restarted engine by itself."""
        import zmq
        import zmq.asyncio

        from avbind.realtime.publish.security import apply_client

        context = zmq.asyncio.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 10_000)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_PREVIEW_BYTES + 4096)  # a bigger frame drops that publisher
        if self.curve is not None:
            apply_client(socket, self.curve)
        socket.setsockopt(zmq.SUBSCRIBE, b"avbind/")
        try:
            socket.connect(self.connect)
        except zmq.ZMQError as err:
            socket.close()
            raise ValueError(f"cannot connect to {self.connect!r}: {err}") from None
        try:
            while True:
                frames = await socket.recv_multipart()
                try:
                    _, _, message, data = parse_frames(frames)
                except MalformedMessageError:
                    self.state.malformed_message()
                    continue
                if self.state.apply(message, data) == "restart" and self.snapshot_endpoint:
                    self._snapshot_wanted.set()  # the new engine may hold more than its next messages say
                self._notify()
        finally:
            socket.close()
            context.term()

    async def snapshots(self) -> None:
        """Ask for the engine's snapshot at start and after each restart, retrying until it answers."""
        import zmq

        from avbind.realtime.publish.snapshot import request_snapshot

        self._snapshot_wanted.set()
        warned = False
        while True:
            await self._snapshot_wanted.wait()
            try:
                snapshot = await asyncio.to_thread(request_snapshot, self.snapshot_endpoint, self.curve, 2.0)
                self.state.apply_snapshot(snapshot)
            except zmq.ZMQError as err:  # not a usable endpoint: say so once, as --connect does
                raise ValueError(f"cannot ask {self.snapshot_endpoint!r} for a snapshot: {err}") from None
            except (TimeoutError, ValueError, KeyError, TypeError) as err:
                if not warned:
                    print(f"avbind dashboard: no snapshot from {self.snapshot_endpoint} yet ({err}); retrying",
                          file=sys.stderr, flush=True)
                    warned = True
                await asyncio.sleep(SNAPSHOT_RETRY_S)
                continue
            self._snapshot_wanted.clear()
            self._notify()

    async def housekeeping(self) -> None:
        """Once a second: forget old streams and events, and refresh the pages' ages."""
        while True:
            await asyncio.sleep(1.0)
            self.state.expire()
            self._notify()

    # HTTP ----------------------------------------------------------------------------------
    def app(self) -> web.Application:
        from aiohttp import web

        @web.middleware
        async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
            if self.loopback_only and not is_loopback_host(_request_host(request.headers.get("Host", ""))):
                return web.Response(status=421, text="this dashboard answers only to a loopback Host\n")
            response = await handler(request)
            if not response.prepared:  # a WebSocket's upgrade has gone out already
                response.headers.update(SECURITY_HEADERS)
            return response

        app = web.Application(middlewares=[guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/state", self._state)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/preview/{name}", self._preview)
        for name in STATIC:
            app.router.add_get(f"/{name}", self._static)
        return app

    async def _page(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text=_asset("dashboard.html"), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        from aiohttp import web

        name = request.path.lstrip("/")
        return web.Response(text=_asset(name), content_type=STATIC[name])

    async def _state(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text=json.dumps(self.state.describe()), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _preview(self, request: web.Request) -> web.Response:
        from aiohttp import web

        name = request.match_info["name"].removesuffix(".jpg")
        jpeg = self.state.jpeg(name)
        if jpeg is None:
            return web.Response(status=404, text="no preview for this stream (is the engine run with --preview-fps?)\n")
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        origin = request.headers.get("Origin")
        if origin is not None and origin not in (f"http://{request.host}", f"https://{request.host}"):
            return web.Response(status=403, text="WebSocket from another origin refused\n")
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)

        async def push() -> None:
            while not ws.closed:
                waiting = self._changed
                await ws.send_str(self.rendered())
                with contextlib.suppress(asyncio.TimeoutError):  # not the builtin before Python 3.11
                    await asyncio.wait_for(waiting.wait(), timeout=1.0)
                await asyncio.sleep(PUSH_EVERY_S)  # a busy engine still costs each page at most 4 sends a second

        sender = asyncio.create_task(push())
        try:
            async for _ in ws:  # the page sends nothing; this notices it leave
                pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await sender
        return ws


def _asset(name: str) -> str:
    return files("avbind.realtime.views").joinpath(name).read_text(encoding="utf-8")


async def serve(dashboard: Dashboard, host: str, port: int, seconds: float | None = None) -> None:
    """Run until SIGINT / SIGTERM (or ``seconds``); prints the page's URL once it is listening."""
    from aiohttp import web

    runner = web.AppRunner(dashboard.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        sys.exit(f"avbind dashboard: cannot listen on {host}:{port}: {err}")
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"avbind dashboard: http://{shown}:{bound[1]}/ showing {dashboard.connect}"
          f"{' (snapshot ' + dashboard.snapshot_endpoint + ')' if dashboard.snapshot_endpoint else ''}",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(dashboard.subscribe()), asyncio.create_task(dashboard.housekeeping())]
    if dashboard.snapshot_endpoint:
        tasks.append(asyncio.create_task(dashboard.snapshots()))
    waiter = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([waiter, *tasks], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in [waiter, *tasks]:
            task.cancel()
        await asyncio.gather(waiter, *tasks, return_exceptions=True)
        await runner.cleanup()


# Command -----------------------------------------------------------------------------------
def dashboard_command(args: argparse.Namespace) -> int:
    """Check the address (loopback unless ``--http-public``), then serve until stopped."""
    from avbind.realtime.commands import client_curve_from_args

    try:
        host, port = parse_http(args.http)
    except ValueError as err:
        sys.exit(f"avbind dashboard: {err}")
    loopback = is_loopback_host(host)
    if not loopback and not args.http_public:
        sys.exit(f"avbind dashboard: --http {args.http} is not a loopback address: anyone who can reach it would "
                 "see every stream's predictions and pictures, with no password. Add --http-public to mean it, "
                 f"or keep the default {DEFAULT_HTTP}")
    curve = client_curve_from_args(args)
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        sys.exit(INSTALL_HINT)
    if not loopback:
        print(f"avbind dashboard: warning: serving on {host}, not loopback: no password, no TLS; anyone who "
              "can reach it sees every stream", file=sys.stderr)
    state = DashboardState(forget_s=args.forget_s)
    dashboard_loop = Dashboard(args.connect, args.snapshot, curve, state, loopback_only=loopback)
    asyncio.run(serve(dashboard_loop, host, port, args.seconds))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``avbind dashboard``; its subscriber options are ``avbind listen``'s."""
    from avbind.realtime.commands import DEFAULT_ENDPOINT, _number, add_curve_client_options

    p = sub.add_parser("dashboard", help="every stream of an engine in a browser page, live (needs avbind[dashboard])")
    p.add_argument("--connect", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help=f"the engine's published endpoint (default {DEFAULT_ENDPOINT})")
    p.add_argument("--snapshot", metavar="ENDPOINT",
                   help="the engine's --snapshot endpoint: show every stream's current state at once")
    add_curve_client_options(p)
    p.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT",
                   help=f"where to serve the page (default {DEFAULT_HTTP}; port 0: any free one)")
    p.add_argument("--http-public", action="store_true",
                   help="allow --http on an address other than loopback (no password: anyone who reaches it "
                        "sees every stream)")
    p.add_argument("--forget-s", type=_number(above=0), default=FORGET_S, metavar="S",
                   help=f"how long an ended or silent stream stays on the page (s; default {FORGET_S:g})")
    p.add_argument("--seconds", type=_number(above=0), help="stop after this long (default: until Ctrl-C)")
    p.set_defaults(func=dashboard_command)


__all__ = ["Dashboard", "DashboardState", "add_cli", "dashboard_command", "is_loopback_host", "parse_http", "serve"]
