"""Hot model swap: which models may replace a running one, and a watcher that swaps on file change.

The engine keeps its streams' buffers, cursors and sockets across a swap and only resets the model
state, so a new model must take exactly the inputs the streams already cut: the same frame size,
audio window, log-mel features, window offset and step rate. Everything else (weights, class
list, state layout, precision, backend) may differ. :meth:`avbind.realtime.engine.Engine.swap_model`
does the swap; :class:`ModelWatcher` calls it when a model file is replaced (``avbind run
--watch-model``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from avbind.realtime.backends.model_file import ModelInfo

if TYPE_CHECKING:
    from avbind.realtime.engine import Engine

log = logging.getLogger(__name__)

POLL_S = 0.5  # s between looks at a watched model file


@dataclass(frozen=True)
class ModelSwap:
    """What a completed swap installed."""

    name: str  # the new model's name (its config's ``name``)
    classes: tuple[str, ...]  # the new model's event names, background last
    path: Path | None  # the file it was loaded from, when known
    backend: str  # the new backend's description
    streams: int  # streams whose state was reset
    load_s: float  # s spent opening and checking the new model (the engine kept stepping meanwhile)


def swap_problems(running: ModelInfo, new: ModelInfo) -> list[str]:
    """Why ``new`` cannot replace ``running`` in place; empty when it can.

    A stream's buffers are cut for the running model: another frame size, audio window, feature
    setting or step rate would make every step fail or, worse, feed the new model features it was
    not trained on without any error.
    """
    problems = []
    if new.input_size != running.input_size:
        problems.append(f"input size {new.input_size} px, the running model takes {running.input_size} px")
    if new.window_frames != running.window_frames:
        problems.append(f"audio window {new.window_frames} frames, the running model takes {running.window_frames}")
    if new.audio_end_offset_s != running.audio_end_offset_s:
        problems.append(f"audio window offset {new.audio_end_offset_s:g} s, "
                        f"the running model uses {running.audio_end_offset_s:g} s")
    if new.step_rate_hz != running.step_rate_hz:
        problems.append(f"step rate {new.step_rate_hz:g} Hz, the running model steps at {running.step_rate_hz:g} Hz")
    for spec in fields(new.features):
        theirs, ours = getattr(new.features, spec.name), getattr(running.features, spec.name)
        if theirs != ours:
            problems.append(f"log-mel {spec.name} {theirs:g}, the running model uses {ours:g}")
    if "event_logits" not in new.outputs:
        problems.append(f"no event_logits output (outputs: {', '.join(new.outputs)})")
    return problems


Signature = tuple[int, int, int]  # (st_ino, st_mtime_ns, st_size)


def file_signature(path: Path) -> Signature | None:
    """What changes when a file is replaced or rewritten; None while there is no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ModelWatcher:
    """Swaps the engine's model whenever ``path`` is replaced.

    The contract for whoever replaces the file is write-then-rename (``os.replace``, ``mv``), which
    makes the new file appear complete at once. A file rewritten in place is tolerated: a change is
    acted on only once the file has looked the same on two polls in a row, and a file that still
    fails to load (or is refused) leaves the old model running until the next change.
    """

    def __init__(self, engine: Engine, path: str | Path, poll_s: float = POLL_S,
                 report: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.path = Path(path)
        self.poll_s = poll_s
        self.report = report  # told each swap and each refusal in one line (statuses say it to subscribers)
        self.swaps: list[ModelSwap] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="avbind-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; waits for a swap in progress, since it holds a backend being opened."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        seen = file_signature(self.path)  # the model the engine started with
        candidate: Signature | None = None
        while not self._stop.wait(self.poll_s):
            now = file_signature(self.path)
            if now is None or now == seen:
                candidate = None
                continue
            if now != candidate:  # changed since the last poll: maybe still being written
                candidate = now
                continue
            seen, candidate = now, None
            self.check_now()

    def check_now(self) -> ModelSwap | None:
        """Swap to the file as it is now; None when it was refused or failed (already published)."""
        try:
            swap = self.engine.swap_model(self.path)
        except Exception as err:  # refused, unreadable or half-written: the old model keeps running
            message = str(err)
            log.warning("model swap: %s", message)
            self.failures.append(message)
            if self.report is not None:
                self.report(f"{message}; the old model keeps running")
            return None
        self.swaps.append(swap)
        if self.report is not None:
            self.report(f"model swapped to {swap.name} from {self.path} (classes: {', '.join(swap.classes[:-1])})")
        return swap
