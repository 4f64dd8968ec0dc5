"""The one endpoint subscribers see: an XSUB/XPUB proxy in front of every worker's PUB socket.

Workers connect their PUB sockets to the XSUB side; subscribers connect to the XPUB side and
filter by topic there, as they would on ``avbind run``'s own socket. The proxy is not a plain
``zmq.proxy`` because a stream can move: a worker dies, or a new worker takes its share of the
ring, and the stream resumes on another worker whose publisher counts ``seq`` and event ids from 0.
Forwarded blindly, a subscriber would see ``seq`` go back (and count a huge loss) and two events
with one id. So each worker appends an *origin* frame (worker, process, placement) that the proxy
strips, and the proxy renumbers per stream and type:

* within one origin, ``seq`` advances by what the worker's advanced by, so a gap the worker's
  socket caused (its high-water mark towards the proxy) still shows as a gap downstream;
* a new origin continues from the last ``seq`` sent, so a move is no gap at all;
* event ids are offset per origin past every id the stream used before.

It also remembers, per stream, where the last segment ended and which event is open, so the
driver can resume a moved file where its published timeline was and close the event its dead
worker left open.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from avbind.realtime.publish.security import Curve, apply_server
from avbind.realtime.publish.subscription_guard import SubscriptionGuard

log = logging.getLogger(__name__)

DEFAULT_HWM = 10_000  # messages per subscriber: the proxy carries every worker's streams


@dataclass
class _Track:
    """What the proxy knows of one stream's published messages."""

    origin: bytes = b""
    epoch: int = -1  # placement epoch of ``origin``: older ones are a moved stream's last messages
    last_in: dict[str, int] = field(default_factory=dict)  # type -> last seq received from ``origin``
    next_out: dict[str, int] = field(default_factory=dict)  # type -> next seq to send
    event_base: int = 0  # added to the origin's event ids
    next_event: int = 0  # lowest event id not used yet downstream
    position_s: float = 0.0  # end of the last segment published (stream timeline, s)
    open_event: dict[str, Any] | None = None  # the last event start without its end, as sent
    last_status: dict[str, Any] | None = None


class SeqProxy:
    """Runs in a thread of the driver. ``frontend`` is where workers connect, ``publish`` where
    subscribers do; both may be ``tcp://HOST:*`` (the bound addresses are in ``frontend_bound`` and
    ``bound``)."""

    def __init__(self, publish: str | list[str], frontend: str = "tcp://127.0.0.1:*", hwm: int = DEFAULT_HWM,
                 context: zmq.Context | None = None, curve: Curve | None = None,
                 curve_allow: str | Path | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self._xsub = self._context.socket(zmq.XSUB)
        self._xpub = self._context.socket(zmq.XPUB)
        for sock in (self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, hwm)
            sock.setsockopt(zmq.SNDHWM, hwm)
        self.guard = SubscriptionGuard(self._xpub, curve=curve is not None)  # nor can they grow the driver
        if curve is not None:  # the subscribers' side only; the workers' side is the cluster's own network
            apply_server(self._xpub, curve, curve_allow)
        try:
            self._xsub.bind(frontend)
            self.frontend_bound = self._xsub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.bound: list[str] = []
            for endpoint in [publish] if isinstance(publish, str) else publish:
                self._xpub.bind(endpoint)
                self.bound.append(self._xpub.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError as err:
            self._xsub.close()
            self.guard.close()
            self._xpub.close()
            raise ValueError(f"cannot publish on {publish} (or bind the workers' side {frontend}): {err}") from err
        # Everything comes to the proxy (it renumbers every type); subscribers filter at the XPUB.
        self._xsub.send(b"\x01")
        self._tracks: dict[str, _Track] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avbind-proxy", daemon=True)
        self.forwarded = 0
        self.malformed = 0
        self.stale = 0  # messages from a worker a stream had already moved away from, dropped
        self.refused = 0  # sends the XPUB refused (never: it drops per subscriber at its HWM)
        self._outbox: list[list[bytes]] = []  # messages the driver publishes itself, sent by the proxy thread

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._xsub.close()
        self.guard.close()
        self._xpub.close()

    # -- what the driver asks ------------------------------------------------------------------
    def position(self, stream: str) -> float:
        """Where the stream's last published segment ended (0 if none)."""
        with self._lock:
            track = self._tracks.get(stream)
            return 0.0 if track is None else track.position_s

    def last_status(self, stream: str) -> dict[str, Any] | None:
        with self._lock:
            track = self._tracks.get(stream)
            return None if track is None or track.last_status is None else dict(track.last_status)

    def forget(self, stream: str) -> None:
        """A stream removed for good: a new stream of the same name starts afresh."""
        with self._lock:
            self._tracks.pop(stream, None)

    def close_open_event(self, stream: str, end_s: float, why: str) -> bool:
        """Publish the end of the event a stream's dead worker left open, so every start a
        subscriber saw has its end. True if there was one."""
        with self._lock:
            track = self._tracks.get(stream)
            if track is None or track.open_event is None:
                return False
            start = track.open_event
            track.open_event = None
            seq = track.next_out.get("event", 0)
            track.next_out["event"] = seq + 1
            now = time.time()
            message = {**start, "event": "end", "seq": seq, "end": round(max(end_s, start["start"]), 6),
                       "capture_time": round(now, 6), "publish_time": round(now, 6)}
            self._outbox.append([f"avbind/{stream}/event".encode(), json.dumps(message).encode()])
        log.info("closed event %s of %s: %s", start["event_id"], stream, why)
        return True

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._xsub, zmq.POLLIN)
        poller.register(self._xpub, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                events = dict(poller.poll(50))
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                raise
            if self._xpub in events:  # subscriptions, vetted and applied by the guard
                self.guard.drain()
            with self._lock:
                outbox, self._outbox = self._outbox, []
            for frames in outbox:
                self._send(frames)
            if self._xsub in events:
                for _ in range(1000):  # a bounded batch, then look at the other side again
                    try:
                        frames = self._xsub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    out = self._renumber(frames)
                    if out is not None:
                        self._send(out)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._xpub.send_multipart(frames, flags=zmq.NOBLOCK)
            self.forwarded += 1
        except zmq.Again:
            self.refused += 1

    def _renumber(self, frames: list[bytes]) -> list[bytes] | None:
        if len(frames) != 3:
            self.malformed += 1
            return None
        topic, body, origin = frames
        try:
            message = json.loads(body)
            stream, kind, seq = message["stream"], message["type"], int(message["seq"])
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return None
        try:
            epoch = int(origin.split(b":", 1)[0])
        except ValueError:
            self.malformed += 1
            return None
        with self._lock:
            track = self._tracks.setdefault(stream, _Track())
            if epoch < track.epoch:  # a worker the stream has left, still sending: never interleave
                self.stale += 1
                return None
            if origin != track.origin:  # the stream (re)started on a worker: continue its numbering
                track.origin, track.epoch = origin, epoch
                track.last_in = {}
                track.event_base = track.next_event
            previous = track.last_in.get(kind)
            track.last_in[kind] = seq
            # Messages this origin sent that never reached the proxy stay a gap downstream.
            lost = seq if previous is None else max(0, seq - previous - 1)
            out_seq = track.next_out.get(kind, 0) + lost
            track.next_out[kind] = out_seq + 1
            message["seq"] = out_seq
            if kind == "event":
                message["event_id"] = int(message["event_id"]) + track.event_base
                track.next_event = max(track.next_event, message["event_id"] + 1)
                track.open_event = dict(message) if message.get("event") == "start" else None
            elif kind == "segment":
                track.position_s = max(track.position_s, float(message.get("end", 0.0)))
            elif kind == "status":
                track.last_status = message
        return [topic, json.dumps(message).encode()]
