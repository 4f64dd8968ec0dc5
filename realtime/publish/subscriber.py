"""Subscriber side: receive avbind messages, notice lost ones, and print them for people.

``avbind listen`` is built on :class:`Subscriber`; any ZeroMQ SUB socket in any language works the
same way (see the README for the topic and message format).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from avbind.realtime.publish.messages import TYPES


@dataclass
class Received:
    topic: str
    message: dict[str, Any]
    missed: int  # messages lost just before this one on its stream and type (seq gap)


@dataclass
class Subscriber:
    endpoint: str
    stream: str | None = None  # None: every stream
    types: tuple[str, ...] = ("segment", "event", "status")
    hwm: int = 10_000
    _last_seq: dict[tuple[str, str], int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in TYPES]
        if unknown:
            raise ValueError(f"unknown message types {unknown}; choose from {TYPES}")
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, self.hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if self.stream:
            for kind in self.types:
                self._socket.setsockopt_string(zmq.SUBSCRIBE, f"avbind/{self.stream}/{kind}")
        else:
            self._socket.setsockopt_string(zmq.SUBSCRIBE, "avbind/")
        self._socket.connect(self.endpoint)
        self.missed = 0

    def receive(self, timeout_s: float | None = None) -> Received | None:
        """The next message of the selected types, or None after ``timeout_s`` with nothing."""
        deadline_ms = None if timeout_s is None else int(timeout_s * 1000)
        while True:
            if not self._socket.poll(deadline_ms):
                return None
            raw_topic, raw = self._socket.recv_multipart()
            name = raw_topic.decode()
            kind = name.rsplit("/", 1)[-1]
            if kind not in self.types:
                continue
            message = json.loads(raw)
            key = (message["stream"], kind)
            last = self._last_seq.get(key)
            missed = 0 if last is None else max(0, message["seq"] - last - 1)
            self._last_seq[key] = message["seq"]
            self.missed += missed
            return Received(name, message, missed)

    def __iter__(self) -> Iterator[Received]:
        while True:
            received = self.receive()
            if received is not None:
                yield received

    def close(self) -> None:
        self._socket.close()


def format_message(message: dict[str, Any]) -> str:
    """One readable line per message."""
    stream, kind = message["stream"], message["type"]
    head = f"[{stream}]"
    if kind == "segment":
        tops = ", ".join(f"{s['label']} {s['score']:.2f}" for s in message["top"][1:])
        degraded = f" ({message['degraded_steps']} degraded)" if message["degraded_steps"] else ""
        extra = ""
        if "verb" in message and not message["is_background"]:
            extra = f"  verb {message['verb']['label']}, noun {message['noun']['label']}"
        return (f"{head} {message['start']:7.1f}-{message['end']:<7.1f} {message['label']:<34} "
                f"{message['confidence']:.2f}   next: {tops}{extra}{degraded}")
    if kind == "event":
        if message["event"] == "start":
            return (f"{head} >>> {message['label']} started at {message['start']:.1f} s "
                    f"(score {message['confidence']:.2f})")
        return (f"{head} <<< {message['label']} ended: {message['start']:.1f}-{message['end']:.1f} s "
                f"({message['end'] - message['start']:.1f} s, mean {message['confidence']:.2f}, "
                f"peak {message['peak']:.2f})")
    if kind == "status":
        lat = message["latency_ms"]
        latency = f"{lat['p50']:.0f}/{lat['p99']:.0f} ms" if lat["p50"] is not None else "-"
        drops = ", ".join(f"{k} {v}" for k, v in message["drops"].items() if v)
        return (f"{head} status {message['state']}: {message['fps']:.1f} fps, {message['steps']} steps, "
                f"latency p50/p99 {latency}, drops: {drops or 'none'}"
                f"{'  ' + message['message'] if message['message'] else ''}")
    top = max(message["scores"], key=lambda s: s["score"])
    return f"{head} step {message['step']} t={message['time']:.2f} {top['label']} {top['score']:.2f}"
