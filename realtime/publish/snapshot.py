"""Late joiners: the current state of every stream, answered beside the live feed.

A subscriber that connects late sees nothing until the next message, and cannot tell which events
are open. This is the Clone pattern of the ZeroMQ guide: the publisher remembers, per stream, the
last segment, the last status and the events started but not ended, each with the ``seq`` it was
sent at; a ROUTER socket answers a request with all of it, taken under the publisher's lock so it
is exactly the state after those ``seq``. A client

1. subscribes to the live feed and waits for its first message (its subscription is then active),
2. asks for the snapshot,
3. drops live messages whose ``seq`` the snapshot already covers (per stream and type),

and has the whole picture with no gap and no duplicate (:func:`late_join` does exactly that).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from avbind.realtime.publish.security import Curve, apply_client, apply_server


class StreamState:
    """What the publisher keeps per stream for snapshots (updated under its lock)."""

    def __init__(self) -> None:
        self.segment: dict[str, Any] | None = None
        self.status: dict[str, Any] | None = None
        self.open_events: dict[int, dict[str, Any]] = {}  # event id -> its start message
        self.seq: dict[str, int] = {}  # type -> seq of the last message sent

    def update(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        self.seq[kind] = message["seq"]
        if kind == "segment":
            self.segment = message
        elif kind == "status":
            self.status = message
            if message.get("state") == "ended":
                self.open_events.clear()
        elif kind == "event":
            if message.get("event") == "start":
                self.open_events[message["event_id"]] = message
            else:
                self.open_events.pop(message["event_id"], None)

    def describe(self) -> dict[str, Any]:
        return {"segment": self.segment, "status": self.status,
                "open_events": [self.open_events[k] for k in sorted(self.open_events)], "seq": dict(self.seq)}


class SnapshotServer:
    """A ROUTER bound at ``endpoint`` answering any request with ``publisher.snapshot()`` as JSON."""

    def __init__(self, publisher: Any, endpoint: str, curve: Curve | None = None,
                 curve_allow: str | Path | None = None) -> None:
        self.publisher = publisher
        self._socket = zmq.Context.instance().socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, 1024)  # a request is a few bytes; nothing big is read
        if curve is not None:
            apply_server(self._socket, curve, curve_allow)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as err:
            self._socket.close()
            raise ValueError(f"cannot serve snapshots on {endpoint}: {err}") from err
        self.bound = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="avbind-snapshot", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(100):
                continue
            frames = self._socket.recv_multipart()
            reply = json.dumps(self.publisher.snapshot()).encode()
            try:
                self._socket.send_multipart([frames[0], *frames[1:-1], reply], zmq.NOBLOCK)
                self.served += 1
            except zmq.ZMQError:
                pass  # the client left

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._socket.close()


def request_snapshot(endpoint: str, curve: Curve | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        apply_client(socket, curve)
    try:
        socket.connect(endpoint)
        socket.send_multipart([b"", b"snapshot"])
        if not socket.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no snapshot from {endpoint} within {timeout_s:g} s")
        return json.loads(socket.recv_multipart()[-1])
    finally:
        socket.close()


def late_join(subscriber: Any, snapshot_endpoint: str, curve: Curve | None = None,
              first_message_s: float = 3.0) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The snapshot, then the live messages it does not cover, in order (a generator that reads on).

    ``subscriber`` is a :class:`~avbind.realtime.publish.subscriber.Subscriber` already connected.
    """
    buffered: list[dict[str, Any]] = []
    deadline = time.monotonic() + first_message_s
    while not buffered and time.monotonic() < deadline:  # our subscription is live once one arrives
        got = subscriber.receive(0.1)
        if got is not None:
            buffered.append(got.message)
    snapshot = request_snapshot(snapshot_endpoint, curve)
    covered = {(name, kind): seq for name, state in snapshot["streams"].items() for kind, seq in state["seq"].items()}

    def fresh(message: dict[str, Any]) -> bool:
        return message["seq"] > covered.get((message["stream"], message["type"]), -1)

    def live() -> Iterator[dict[str, Any]]:
        yield from (m for m in buffered if fresh(m))
        while True:
            got = subscriber.receive(0.2)
            if got is None:
                yield None  # type: ignore[misc]  # lets a caller check its clock
            elif fresh(got.message):
                yield got.message

    return snapshot, live()
