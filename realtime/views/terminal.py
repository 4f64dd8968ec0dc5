"""The terminal view: a subscriber that prints what the engine publishes, one line per message.

Built on the public ZeroMQ interface rather than on engine internals, so what ``avbind demo``
shows is exactly what any subscriber receives.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from avbind.realtime.publish.subscriber import Received, Subscriber, format_message

WIDTH = 100  # columns: every printed line fits a standard terminal
TRUTH_LABEL = 22  # characters of the true label shown beside a prediction


def fit(line: str, width: int = WIDTH) -> str:
    """``line`` cut to ``width`` columns ("..." marks a cut), so long labels never wrap the view."""
    return line if len(line) <= width else line[: width - 3] + "..."


class TerminalView:
    def __init__(
        self, subscriber: Subscriber, out: TextIO | None = None, show_status_every_s: float = 5.0,
        truth: Callable[[int], int] | None = None, class_names: Sequence[str] = (), width: int | None = None,
    ) -> None:
        """``truth`` (segment index -> true class index) and ``class_names`` (background last): where the
        input's ground truth is known (``avbind demo``), each segment line shows it and whether it matched.
        ``width``: cut every line to this many columns (the demo's fixed-width view); None: never cut, as
        ``avbind run`` needs its status and error lines whole. With ``truth``, the default is WIDTH."""
        self.subscriber = subscriber
        self.out = out or sys.stdout
        self.show_status_every_s = show_status_every_s  # heartbeats arrive each second: show fewer
        self.truth = truth
        self.class_names = list(class_names)
        self.width = width if width is not None or truth is None else WIDTH
        self._last_status: dict[str, float] = {}
        self.received: list[Received] = []

    def line(self, message: dict[str, Any]) -> str:
        """The printed line of ``message``: within ``width``, with the ground truth where known."""
        text = format_message(message)
        width = self.width
        if self.truth is None or message.get("type") != "segment":
            return text if width is None else fit(text, width)
        try:
            true = self.truth(int(message["segment"]))
        except (KeyError, TypeError, ValueError, IndexError):
            return text if width is None else fit(text, width)
        name = self.class_names[true] if 0 <= true < len(self.class_names) else str(true)
        mark = "ok" if message.get("class_index") == true else "XX"
        suffix = f" | truth: {fit(name, TRUTH_LABEL)} {mark}"
        return (text if width is None else fit(text, max(0, width - len(suffix)))) + suffix

    def show(self, received: Received) -> None:
        message = received.message
        if received.missed:
            lost = f"[{message['stream']}] ({received.missed} {message['type']} messages lost: slow reader)"
            print(lost if self.width is None else fit(lost, self.width), file=self.out)
        # Routine heartbeats are thinned out; a status that says something (a model swapped in, a
        # stream running again after a move) is always shown.
        if (message["type"] == "status" and message["level"] == "info" and message["state"] == "running"
                and not message.get("message")):
            last = self._last_status.get(message["stream"], 0.0)
            if time.monotonic() - last < self.show_status_every_s:
                return
            self._last_status[message["stream"]] = time.monotonic()
        print(self.line(message), file=self.out, flush=True)

    def run(self, until: float | None = None, stop_when_ended: bool = False,
            done: Callable[[], bool] | None = None) -> None:
        """Print messages until monotonic time ``until`` (forever if None), ``done()`` or every stream ended.

        ``done`` is the reliable way to stop (``avbind run`` passes "the engine has no stream left" and
        "a stop signal arrived"): ``stop_when_ended`` only sees the streams whose status reached this
        subscriber, so a stream that ends before another one's ``starting`` arrives would end the view
        early. Once ``done()`` holds, what is already queued is still printed.
        """
        open_streams: set[str] = set()
        while until is None or time.monotonic() < until:
            if done is not None and done():
                self.drain()
                return
            wait = 0.2 if until is None else max(0.0, min(0.2, until - time.monotonic()))
            received = self.subscriber.receive(wait)
            if received is None:
                continue
            self._take(received)
            message = received.message
            if message["type"] == "status" and done is None:
                if message["state"] == "ended":
                    open_streams.discard(message["stream"])
                    if stop_when_ended and not open_streams:
                        return
                else:
                    open_streams.add(message["stream"])

    def drain(self, quiet_s: float = 0.2, max_s: float = 2.0) -> None:
        """Print what arrives until nothing has for ``quiet_s`` (at most ``max_s``): the last messages
        after a stop, such as the ``ended`` statuses, without waiting on streams that still run."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and (received := self.subscriber.receive(quiet_s)) is not None:
            self._take(received)

    def _take(self, received: Received) -> None:
        self.received.append(received)
        self.show(received)
