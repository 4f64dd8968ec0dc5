"""Subscriber side: receive avbind messages, notice lost ones, and print them for people.

``avbind listen`` is built on :class:`Subscriber`; any ZeroMQ SUB socket in any language works the
same way (see the README for the topic and message format).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from avbind.realtime.publish.messages import ATTACHED, TYPES, check_stream_name
from avbind.realtime.publish.security import Curve, apply_client

log = logging.getLogger(__name__)

NOTICE_EVERY_S = 5.0  # at most one "skipped malformed message" log line this often
# Fields every message carries (message_schema.json); a message without them is skipped as malformed.
_ENVELOPE: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "type": (str,), "stream": (str,), "seq": (int,),
    "capture_time": (int, float), "publish_time": (int, float),
}


class MalformedMessageError(ValueError):
    """A message that is not ``[avbind/<stream>/<type>, JSON object with the envelope fields]``."""


def parse_message(frames: list[bytes]) -> tuple[str, str, dict[str, Any]]:
    """Check one multipart message and return (topic, type, message); MalformedMessageError says what is wrong.

    Anyone can connect a publisher to a subscriber's endpoint (or a wrong program can publish on
    it), so nothing about the frames is trusted: the subscriber must survive them, not crash.
    A preview's picture is checked and dropped here; :func:`parse_frames` returns it.
    """
    return parse_frames(frames)[:3]  # type: ignore[return-value]


def parse_frames(frames: list[bytes]) -> tuple[str, str, dict[str, Any], bytes | None]:
    """:func:`parse_message`, plus the binary third frame of the types that carry one (a preview's
    JPEG, exactly as long as its ``bytes`` field says), else None."""
    if len(frames) not in (2, 3):
        raise MalformedMessageError(f"expected 2 frames [topic, json] (3 for a preview), got {len(frames)}")
    raw_topic, raw = frames[:2]
    try:
        name = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessageError("topic is not valid UTF-8") from None
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "avbind" or parts[2] not in TYPES:
        raise MalformedMessageError(f"topic {name!r} is not avbind/<stream>/<type>")
    try:
        check_stream_name(parts[1])
    except ValueError as err:
        raise MalformedMessageError(f"topic: {err}") from None
    try:
        message = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedMessageError("body is not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise MalformedMessageError(f"body is a JSON {type(message).__name__}, not an object")
    for key, types in _ENVELOPE.items():
        value = message.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise MalformedMessageError(f"field {key!r} missing or not {'/'.join(t.__name__ for t in types)}")
    if message["stream"] != parts[1] or message["type"] != parts[2]:
        raise MalformedMessageError("stream or type differs from the topic")
    if message["seq"] < 0:
        raise MalformedMessageError("negative seq")
    attached = frames[2] if len(frames) == 3 else None
    if (attached is not None) != (parts[2] in ATTACHED):
        raise MalformedMessageError(f"a {parts[2]} message with {len(frames)} frames")
    if attached is not None:
        size = message.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(attached):
            raise MalformedMessageError(f"{parts[2]}: field 'bytes' is not the third frame's length {len(attached)}")
    return name, parts[2], message, attached


@dataclass
class Received:
    topic: str
    message: dict[str, Any]
    missed: int  # messages lost just before this one on its stream and type (seq gap)
    data: bytes | None = None  # a preview's JPEG (the third frame); None for every other type


@dataclass
class Subscriber:
    endpoint: str
    stream: str | None = None  # None: every stream
    types: tuple[str, ...] = ("segment", "event", "status")  # previews (pictures) only when asked for
    hwm: int = 10_000
    curve: Curve | None = None  # the server's public key and this client's key pair (security.py)
    _last_seq: dict[tuple[str, str], int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in TYPES]
        if unknown:
            raise ValueError(f"unknown message types {unknown}; choose from {TYPES}")
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, self.hwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            apply_client(self._socket, self.curve)
        if self.stream:
            for kind in self.types:
                self._socket.setsockopt_string(zmq.SUBSCRIBE, f"avbind/{self.stream}/{kind}")
        else:
            self._socket.setsockopt_string(zmq.SUBSCRIBE, "avbind/")
        self._socket.connect(self.endpoint)
        self.missed = 0
        self.malformed = 0  # messages skipped because they were not valid avbind messages
        self._noticed = 0  # malformed count at the last log notice
        self._notice_at = -math.inf

    def receive(self, timeout_s: float | None = None) -> Received | None:
        """The next message of the selected types, or None after ``timeout_s`` with nothing."""
        deadline_ms = None if timeout_s is None else int(timeout_s * 1000)
        while True:
            if not self._socket.poll(deadline_ms):
                return None
            frames = self._socket.recv_multipart()
            try:
                name, kind, message, data = parse_frames(frames)
            except MalformedMessageError as err:
                self._skip(err)
                continue
            if kind not in self.types:
                continue
            key = (message["stream"], kind)
            last = self._last_seq.get(key)
            missed = 0 if last is None else max(0, message["seq"] - last - 1)
            self._last_seq[key] = message["seq"]
            self.missed += missed
            return Received(name, message, missed, data)

    def _skip(self, err: MalformedMessageError) -> None:
        """Count a malformed message; log one line at most every NOTICE_EVERY_S so a flood cannot spam."""
        self.malformed += 1
        now = time.monotonic()
        if now - self._notice_at >= NOTICE_EVERY_S:
            new = self.malformed - self._noticed
            log.warning("skipped %d malformed message(s) from %s (latest: %s)", new, self.endpoint,
                        escape(str(err)))
            self._noticed, self._notice_at = self.malformed, now

    def __iter__(self) -> Iterator[Received]:
        while True:
            received = self.receive()
            if received is not None:
                yield received

    def close(self) -> None:
        self._socket.close()


def escape(text: Any) -> str:
    """``text`` as one printable line: newlines, ANSI escapes and other control characters become ``\\xNN``.

    Names and labels come from the network; printed raw they could forge lines or drive the terminal.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def _num(value: Any, spec: str) -> str:
    """A number formatted with ``spec``; '?' for anything that is not one (a hostile field must not raise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return format(value, spec)


def _label(item: Any) -> str:
    return escape(item.get("label", "?")) if isinstance(item, dict) else "?"


def format_age(publish_time: Any, now: float | None = None) -> str:
    """How old a message is (wall clock ``now`` minus its publish time), so a stale view is visible."""
    if isinstance(publish_time, bool) or not isinstance(publish_time, int | float) or not math.isfinite(publish_time):
        return "age ?"
    age_s = (time.time() if now is None else now) - publish_time
    return f"age {age_s * 1000:.0f} ms" if abs(age_s) < 10 else f"age {age_s:.1f} s"


def format_message(message: dict[str, Any], now: float | None = None) -> str:
    """One readable line per message, ending with its age; every string from the message is escaped.

    ``now`` is the wall-clock time to measure the age against (default: ``time.time()``). Never
    raises: a message with missing or mistyped fields still gets a line, with '?' for what is missing.
    """
    if not isinstance(message, dict):
        return f"(unreadable message: {escape(repr(message))[:200]})"
    try:
        line = _format_body(message)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        line = f"[{escape(message.get('stream', '?'))}] {escape(message.get('type', '?'))} (unreadable fields)"
    return f"{line}  ({format_age(message.get('publish_time'), now)})"


def _format_body(message: dict[str, Any]) -> str:
    get = message.get
    head = f"[{escape(get('stream', '?'))}]"
    kind = get("type")
    if kind == "segment":
        top = get("top") if isinstance(get("top"), list) else []
        tops = ", ".join(f"{_label(s)} {_num(s.get('score') if isinstance(s, dict) else None, '.2f')}"
                         for s in top[1:])
        degraded = f" ({_num(get('degraded_steps'), 'd')} degraded)" if get("degraded_steps") else ""
        extra = ""
        if "verb" in message and not get("is_background"):
            extra = f"  verb {_label(get('verb'))}, noun {_label(get('noun'))}"
        return (f"{head} {_num(get('start'), '7.1f')}-{_num(get('end'), '<7.1f')} {escape(get('label', '?')):<34} "
                f"{_num(get('confidence'), '.2f')}   next: {tops}{extra}{degraded}")
    if kind == "event":
        label = escape(get("label", "?"))
        if get("event") == "start":
            return (f"{head} >>> {label} started at {_num(get('start'), '.1f')} s "
                    f"(score {_num(get('confidence'), '.2f')})")
        start, end = get("start"), get("end")
        length = end - start if _num(start, "") != "?" and _num(end, "") != "?" else None
        return (f"{head} <<< {label} ended: {_num(start, '.1f')}-{_num(end, '.1f')} s "
                f"({_num(length, '.1f')} s, mean {_num(get('confidence'), '.2f')}, peak {_num(get('peak'), '.2f')})")
    if kind == "status":
        lat = get("latency_ms") if isinstance(get("latency_ms"), dict) else {}
        latency = (f"{_num(lat.get('p50'), '.0f')}/{_num(lat.get('p99'), '.0f')} ms"
                   if lat.get("p50") is not None else "-")
        drops_in = get("drops") if isinstance(get("drops"), dict) else {}
        drops = ", ".join(f"{escape(k)} {escape(v)}" for k, v in drops_in.items() if v)
        note = get("message")
        return (f"{head} status {escape(get('state', '?'))}: {_num(get('fps'), '.1f')} fps, "
                f"{_num(get('steps'), 'd')} steps, latency p50/p99 {latency}, drops: {drops or 'none'}"
                f"{'  ' + escape(note) if note else ''}")
    if kind == "preview":
        size = get("bytes")
        shown = f"{size / 1024:.1f} KB" if _num(size, "") != "?" else "? KB"
        return (f"{head} preview {_num(get('width'), 'd')}x{_num(get('height'), 'd')} {escape(get('format', '?'))} "
                f"{shown} t={_num(get('time'), '.2f')}")
    if kind == "step":
        scores = [s for s in get("scores") or [] if isinstance(s, dict) and _num(s.get("score"), "") != "?"]
        top = max(scores, key=lambda s: s["score"]) if scores else {}
        return (f"{head} step {_num(get('step'), 'd')} t={_num(get('time'), '.2f')} {_label(top)} "
                f"{_num(top.get('score'), '.2f')}")
    return f"{head} {escape(kind)}"
