"""ZeroMQ PUB publisher that never blocks the engine.

PUB sockets drop messages for a subscriber whose queue is full (the high-water mark) instead of
waiting for it, so a slow or stalled subscriber cannot slow the engine or the other subscribers.
ZeroMQ does not tell the publisher about those drops; each message's per-stream, per-type ``seq``
lets every subscriber count its own losses (``avbind listen`` reports them).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import zmq

from avbind.realtime.publish.messages import ATTACHED, SCHEMA_VERSION, preview_payload, topic
from avbind.realtime.publish.security import Curve, apply_server, local_client
from avbind.realtime.publish.snapshot import StreamState
from avbind.realtime.publish.subscription_guard import SubscriptionGuard

log = logging.getLogger(__name__)

DEFAULT_HWM = 1000  # messages queued per subscriber before ZeroMQ drops for that subscriber


GUARD_BATCH = 32  # messages handled per turn in each direction by the publishing thread
FRONT_HWM = 10_000  # messages handed to the publishing thread not yet sent (beyond: counted as refused)


class Publisher:
    """Binds one publishing socket to each endpoint (``tcp://*:5555``, ``ipc:///tmp/avbind``)."""

    def __init__(self, endpoints: str | list[str], hwm: int = DEFAULT_HWM, context: zmq.Context | None = None,
                 connect: bool = False, curve: Curve | None = None, curve_allow: str | Path | None = None) -> None:
        """``connect``: connect to the endpoints instead of binding them (a cluster worker publishing
        into its driver's proxy, which is the one endpoint subscribers see). ``curve``: encrypt,
        and with ``curve_allow`` admit only the public keys in that folder (see security.py)."""
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self._context = context or zmq.Context.instance()
        # Bound: an XPUB whose subscriptions the guard vets (a peer cannot grow the engine's memory);
        # connected into a cluster proxy, a plain PUB (the proxy's own socket faces the subscribers).
        self._socket = self._context.socket(zmq.PUB if connect else zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self.guard = None if connect else SubscriptionGuard(self._socket, curve=curve is not None)
        if curve_allow is not None and curve is None:
            self._close_socket()
            raise ValueError("--curve-allow needs --curve-secret (the server's key pair)")
        if curve is not None:
            try:
                apply_server(self._socket, curve, curve_allow)
            except ValueError:
                self._close_socket()
                raise
        self.curve = curve
        self.bound: list[str] = []
        for endpoint in self.endpoints:
            try:
                self._socket.connect(endpoint) if connect else self._socket.bind(endpoint)
            except zmq.ZMQError as err:
                self._close_socket()
                raise ValueError(f"cannot publish on {endpoint}: {err}") from err
            self.bound.append(endpoint if connect else self._socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self._seq: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()  # sockets are not thread-safe; the engine may publish from two threads
        self._closed = threading.Event()
        self._states: dict[str, StreamState] = {}  # per stream, for late joiners (snapshot.py)
        self.model: dict[str, Any] = {}  # what the engine runs, for snapshots
        self._front: threading.Thread | None = None
        self._outbox = self._socket  # where publish() sends
        if self.guard is not None:
            # The bound socket belongs to a thread of its own, fed over an inproc PAIR: libzmq does
            # a peer's bookkeeping (a departing peer's subscriptions are removed by walking the
            # whole subscription trie, seconds under a flood of peers) inside whichever call
            # touches the socket next, and that must never be one of the engine's sends.
            address = f"inproc://avbind-publisher-{id(self)}"
            self._inbox = self._context.socket(zmq.PAIR)
            self._inbox.setsockopt(zmq.RCVHWM, FRONT_HWM)
            self._inbox.bind(address)
            self._outbox = self._context.socket(zmq.PAIR)
            self._outbox.setsockopt(zmq.SNDHWM, FRONT_HWM)
            self._outbox.setsockopt(zmq.LINGER, 0)
            self._outbox.connect(address)
            self._front = threading.Thread(target=self._serve, name="avbind-publisher", daemon=True)
            self._front.start()
        self.sent = 0
        # Sends ZeroMQ refused outright (see ``refused``), one counter per thread that sends, so
        # that neither has to take the other's lock to count.
        self._refused_handover = 0  # engine side: the hand-over PAIR was full
        self._refused_socket = 0  # publishing thread: the bound socket refused the send
        self._wall_offset = time.time() - time.monotonic()

    def _serve(self) -> None:
        """Forward the engine's messages to the bound socket and vet what its peers send."""
        poller = zmq.Poller()
        poller.register(self._inbox, zmq.POLLIN)
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._closed.is_set():
                try:
                    self._forward(poller)
                except Exception:  # this thread must outlive anything a peer makes happen
                    log.exception("publishing thread")
                    time.sleep(0.01)
        finally:
            self._inbox.close()
            self._close_socket()

    def _forward(self, poller: zmq.Poller) -> None:
        ready = dict(poller.poll(100))
        if self._inbox in ready:
            for _ in range(GUARD_BATCH):
                try:
                    frames = self._inbox.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    self._refused_socket += 1
        # Small batches, so that neither direction waits long for the other, nor the engine for
        # the GIL.
        self.guard.drain(GUARD_BATCH)

    def _close_socket(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self._socket.close()

    @property
    def refused(self) -> int:
        """Messages ZeroMQ refused outright. Not a subscriber's losses: a PUB socket drops a slow
        subscriber's messages at its high-water mark without telling the sender, so those are
        counted where they can be, by each subscriber from ``seq`` gaps."""
        return self._refused_handover + self._refused_socket

    @property
    def subscriptions_refused(self) -> int:
        return 0 if self.guard is None else self.guard.refused

    @property
    def subscribers_dropped(self) -> int:
        return 0 if self.guard is None else self.guard.dropped

    def wall(self, monotonic_s: float) -> float:
        """Unix time of a ``time.monotonic()`` reading."""
        return monotonic_s + self._wall_offset

    def publish(self, stream: str, kind: str, payload: dict[str, Any], capture: float) -> dict[str, Any]:
        """Send one message; ``capture`` is the monotonic capture time behind it. Returns the message."""
        if kind in ATTACHED:
            raise ValueError(f"{kind} messages carry a binary frame: use publish_{kind}()")
        return self._publish(stream, kind, payload, capture, None)

    def publish_preview(self, stream: str, jpeg: bytes, width: int, height: int, frame_time: float,
                        capture: float) -> dict[str, Any]:
        """Send a stream's picture as ``[topic, json, jpeg]`` (``--preview-fps``); returns the JSON part.

        The JPEG goes as a frame of its own rather than base64 inside the JSON: a third bigger
        on the wire otherwise, and a subscriber that wants only the numbers would parse it anyway.
        Previews are not kept for snapshots (the next one follows within 1/fps seconds).
        """
        return self._publish(stream, "preview", preview_payload(width, height, frame_time, len(jpeg)), capture,
                             bytes(jpeg))

    def _publish(self, stream: str, kind: str, payload: dict[str, Any], capture: float,
                 attachment: bytes | None) -> dict[str, Any]:
        name = topic(stream, kind)
        with self._lock:
            seq = self._seq[(stream, kind)]
            self._seq[(stream, kind)] = seq + 1
            message = {
                "schema_version": SCHEMA_VERSION, "type": kind, "stream": stream, "seq": seq,
                "capture_time": round(self.wall(capture), 6), "publish_time": round(time.time(), 6), **payload,
            }
            frames = self._frames(name, message)
            if attachment is not None:
                frames.insert(2, attachment)  # [topic, json, attachment, ...what a subclass appends]
            try:
                self._outbox.send_multipart(frames, flags=zmq.NOBLOCK)
                self.sent += 1
            except zmq.Again:  # the hand-over to the publishing thread is full: counted, not waited on
                self._refused_handover += 1
            if attachment is None:  # previews are not part of the snapshot state
                self._states.setdefault(stream, StreamState()).update(message)
        return message

    def snapshot(self) -> dict[str, Any]:
        """Every stream's last segment, last status and open events with the ``seq`` they were sent
        at, consistent with the live feed (taken under the lock sends hold)."""
        with self._lock:
            streams = {name: state.describe() for name, state in self._states.items()}
        return {"schema_version": SCHEMA_VERSION, "time": round(time.time(), 6), "model": self.model,
                "streams": streams}

    def viewer_curve(self) -> Curve | None:
        """Keys for a subscriber inside this process (a terminal view), None without CURVE."""
        return None if self.curve is None else local_client(self._socket, self.curve)

    def _frames(self, name: str, message: dict[str, Any]) -> list[bytes]:
        """The multipart message on the wire; a cluster worker appends a frame its proxy strips."""
        return [name.encode(), json.dumps(message).encode()]

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._front is None:
                self._close_socket()
                return
            self._outbox.close()
        self._front.join(timeout=5)
