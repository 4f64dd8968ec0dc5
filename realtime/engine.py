"""The realtime engine: streams in, one backend, messages out.

Data flows sources -> buffers -> sync -> scheduler -> backend -> post-processing -> publishing.
Sources run in their own threads and only fill buffers; one engine thread does everything else,
so the backend session, per-stream state and the ZeroMQ socket are touched by one thread only.

A failure is contained where it happens: a source that dies reports a status and its stream
carries on with the other modality or ends; a step that fails is reported on its stream's status
topic and the other streams keep running.

The model can be replaced while everything runs (:meth:`Engine.swap_model`): it is opened and
checked in the caller's thread and installed by the engine thread between two ticks.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avbind.realtime.backends import create_backend
from avbind.realtime.backends.base import Backend
from avbind.realtime.model_swap import ModelSwap, swap_problems
from avbind.realtime.publish.messages import check_stream_name
from avbind.realtime.publish.preview import Previews
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.scheduler.batching import run_batch
from avbind.realtime.scheduler.stream import Stream, StreamSettings
from avbind.realtime.sources.base import Source

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class EngineSettings:
    heartbeat_s: float = 1.0  # s between status messages per stream
    max_batch: int = 16  # streams per backend call
    idle_wait_s: float = 0.005  # s the loop sleeps at most when nothing is due
    # s a due step may wait for other streams' steps to share its backend call: 0 favours latency;
    # a few ms lets streams whose steps fall due together run as one batch (more streams per core).
    batch_wait_s: float = 0.0
    # JPEG pictures of each stream's newest frame per second on avbind/<stream>/preview (the
    # dashboard's); 0: none, the default, since each is more bytes than all of a stream's other messages.
    preview_fps: float = 0.0


def percentiles_ms(seconds: list[float] | np.ndarray) -> dict[str, float | None]:
    if len(seconds) == 0:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


@dataclass
class _PendingSwap:
    """A checked backend waiting for the engine thread to install it between two ticks."""

    backend: Backend
    path: Path | None
    load_s: float
    done: threading.Event = field(default_factory=threading.Event)
    old: Backend | None = None  # what it replaced, closed by the caller once installed
    result: ModelSwap | None = None
    error: BaseException | None = None


@dataclass
class _Heartbeat:
    """What a stream's counters were at its last status message; rates are over the interval since."""

    last: float  # monotonic
    frames: int = 0
    steps: int = 0
    degraded: int = 0


class Engine:
    def __init__(
        self, backend: Backend, publisher: Publisher | None = None, settings: EngineSettings | None = None,
    ) -> None:
        self.backend = backend
        self.publisher = publisher
        self.settings = settings or EngineSettings()
        self.listeners: list[Listener] = []  # in-process consumers of every message (views, tests)
        self._streams: dict[str, Stream] = {}
        self._heartbeats: dict[str, _Heartbeat] = {}
        self._resumed: dict[str, str] = {}  # stream -> why it was resumed here, until its first running status
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backend_name = str(backend.describe())
        self.finished_streams: dict[str, Stream] = {}
        self._wall_offset = time.time() - time.monotonic()
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)  # streams per recent call
        # How swap_model opens a model file; the commands set their --backend and --threads here.
        self.open_model: Callable[[Path], Backend] = create_backend
        self._pending_swap: _PendingSwap | None = None  # under _lock
        self._swap_lock = threading.Lock()  # one swap at a time
        self._previews = Previews(publisher, self.settings.preview_fps) if (
            publisher is not None and self.settings.preview_fps > 0) else None

    # Streams -------------------------------------------------------------------------------
    def add_stream(self, name: str, sources: list[Source], settings: StreamSettings | None = None,
                   resumed: str | None = None) -> Stream:
        """Start ``sources`` as stream ``name``; safe while the engine runs.

        ``resumed`` says why a stream that ran elsewhere (another cluster worker) starts here with
        a fresh state: subscribers then see ``reconnecting`` with that reason, then ``running``
        with it once, instead of a ``starting`` that looks like a new stream.
        """
        check_stream_name(name)  # the name is part of every topic: refuse it here, not at the first publish
        with self._lock:
            if name in self._streams:
                raise ValueError(f"stream {name!r} already exists")
            stream = Stream(name, sources, self.backend.info, settings, self._wake)
            self._streams[name] = stream
            self._heartbeats[name] = _Heartbeat(time.monotonic())
            if resumed:
                self._resumed[name] = resumed
        sources_line = f"sources: {', '.join(stream.source_names())}"
        if resumed:
            status = self._status(stream, "reconnecting", "warning", f"{resumed}; state reset; {sources_line}")
        else:
            status = self._status(stream, "starting", "info", sources_line)
        self._emit(stream, "status", status, time.monotonic())
        stream.start()
        return stream

    def remove_stream(self, name: str, publish: bool = True) -> Stream:
        """Stop a stream's sources, publish what it still holds and an ``ended`` status.

        ``publish=False`` stops it silently, for a stream that moves to another worker: that
        worker resumes it from the last published segment and announces the move, so outputs
        flushed here would duplicate the segment it publishes again.
        """
        with self._lock:
            stream = self._streams.pop(name, None)
            self._resumed.pop(name, None)
        if stream is None:
            raise KeyError(f"no stream named {name!r}")
        stream.stop()
        if publish:
            self._end(stream, "removed")
        else:
            self._heartbeats.pop(name, None)
        return stream

    @property
    def streams(self) -> dict[str, Stream]:
        with self._lock:
            return dict(self._streams)

    # Running -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="avbind-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for name in list(self.streams):
            self.remove_stream(name)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every stream has ended (or ``timeout_s``); True if they all ended."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.streams:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                worked = self.tick()
            except Exception:  # the loop must survive anything; per-stream failures are caught inside
                log.exception("engine loop error")
                worked = False
            if not worked:
                self._wake.wait(self.settings.idle_wait_s)

    def tick(self) -> bool:
        """One pass: service every stream, run the due steps as batches, publish. True if a step ran."""
        if self._pending_swap is not None:
            self._install_swap()
        now = time.monotonic()
        streams = list(self.streams.values())
        due: list[tuple[Stream, Any]] = []
        for stream in streams:
            step = self._poll(stream, now)
            if step is not None:
                due.append((stream, step))
        if due and self.settings.batch_wait_s > 0 and len(due) < len(streams):
            self._gather(due, [s for s in streams if all(s is not d for d, _ in due)], now)
        for i in range(0, len(due), self.settings.max_batch):
            self._run_steps(due[i : i + self.settings.max_batch])
        self._heartbeat(time.monotonic())
        if self._previews is not None:
            self._previews.publish_due(streams, time.monotonic())
        return bool(due)

    def _poll(self, stream: Stream, now: float) -> Any:
        """Apply what the stream's sources reported and return its due step input, if any."""
        try:
            for level, message in stream.service():
                state = "reconnecting" if stream.reconnecting else "error" if level == "error" else "running"
                self._emit(stream, "status", self._status(stream, state, level, message), now)
            for kind, payload, capture in stream.take_flushed():
                self._emit(stream, kind, payload, capture)
            step = stream.due_step(now)
        except Exception as err:  # a bad frame or buffer error: report, skip, keep the others
            log.exception("stream %s", stream.name)
            self._emit(stream, "status", self._status(stream, "error", "error", f"{type(err).__name__}: {err}"), now)
            stream.cursor = None if stream.cursor is None else stream.cursor + 1
            return None
        if step is None and stream.finished:
            with self._lock:
                self._streams.pop(stream.name, None)
            stream.stop()
            self._end(stream, "ended")
        return step

    def _gather(self, due: list[tuple[Stream, Any]], waiting: list[Stream], now: float) -> None:
        """Wait up to ``batch_wait_s`` for other streams' steps to fall due and join the batch."""
        deadline = now + self.settings.batch_wait_s
        while waiting and (left := deadline - time.monotonic()) > 0:
            self._wake.wait(left)
            self._wake.clear()
            for stream in list(waiting):
                step = self._poll(stream, time.monotonic())
                if step is not None:
                    due.append((stream, step))
                    waiting.remove(stream)
                elif stream.finished:
                    waiting.remove(stream)

    def _run_steps(self, due: list[tuple[Stream, Any]]) -> None:
        streams = [s for s, _ in due]
        steps = [step for _, step in due]
        try:
            outputs, states = run_batch(self.backend, steps, [s.state for s in streams])
        except Exception as err:
            log.exception("backend step failed")
            for stream in streams:
                stream.cursor += 1
                self._emit(stream, "status", self._status(stream, "error", "error",
                                                          f"backend step failed: {type(err).__name__}: {err}"),
                           time.monotonic())
            return
        self.batch_sizes.append(len(due))
        for stream, step, out, state in zip(streams, steps, outputs, states, strict=True):
            for kind, payload, capture in stream.finish_step(step, out, state):
                self._emit(stream, kind, payload, capture)
            stream.latencies.append(time.monotonic() - step.capture)

    # Model swap ----------------------------------------------------------------------------
    def swap_model(self, model: str | Path | Backend) -> ModelSwap:
        """Replace the running model without stopping streams, sockets or sequence numbers.

        Opening a model takes long (seconds for a big one or a TensorRT engine), so it happens
        here, in the caller's thread, while the streams keep stepping on the old model. Only the
        hand-over runs on the engine thread, between two ticks (never inside a batch), because the
        backend and every stream's state belong to that thread. There each stream closes its open
        segment and events with the old model's labels (as at a discontinuity, so no subscriber is
        left with an event that never ends), starts the new model from a fresh state (counted in
        ``resets``) and publishes a status naming the new model and its classes. The old backend is
        closed once it is out of use.

        ``model`` is a model file (opened with :attr:`open_model`) or an opened backend. A model
        that cannot be opened, or whose inputs differ from the running one's (frame size, audio
        window, features, step rate), is refused: ValueError, an error status on every stream, and
        the old model keeps running.
        """
        if threading.current_thread() is self._thread:  # a listener: it would wait for itself, mid-batch
            raise RuntimeError("swap_model waits for the engine thread: call it from another thread")
        with self._swap_lock:
            started = time.monotonic()
            if isinstance(model, Backend):
                backend, path = model, model.info.path
            else:
                path = Path(model)
                try:
                    backend = self.open_model(path)
                except Exception as err:  # whatever the backend raises: the old model must keep running
                    raise self._refuse(f"model swap refused: cannot open {path}: {err}") from err
            problems = swap_problems(self.backend.info, backend.info)
            if problems:
                if backend is not model:
                    backend.close()
                raise self._refuse(f"model swap refused: {backend.info.name} ({path}) does not fit the running "
                                   f"{self.backend.info.name}: {'; '.join(problems)}")
            job = _PendingSwap(backend, path, time.monotonic() - started)
            with self._lock:
                self._pending_swap = job
            self._wake.set()
            while not job.done.wait(0.05):
                if self._thread is None or not self._thread.is_alive():  # no engine thread to hand it to
                    with self._lock:
                        mine = self._pending_swap is job
                    if mine:
                        self._install_swap()
            if job.error is not None:
                raise RuntimeError(f"model swap failed while installing: {job.error}") from job.error
            if job.old is not None and job.old is not backend:
                job.old.close()
            assert job.result is not None
            log.info("model swapped: %s (%s)", job.result.name, path)
            return job.result

    def _refuse(self, message: str) -> ValueError:
        """Tell every stream's subscribers why the model was not swapped; the error to raise."""
        log.warning("%s", message)
        info = self.backend.info
        for stream in self.streams.values():
            status = self._status(stream, "running", "error", f"{message}; still running {info.name}")
            status["model"] = {"name": info.name, "classes": list(info.event_names)}
            self._emit(stream, "status", status, time.monotonic())
        return ValueError(message)

    def _install_swap(self) -> None:
        """Engine thread, between ticks (or the caller's, with no engine thread running)."""
        with self._lock:  # add_stream builds streams from self.backend under this lock: none misses the swap
            job, self._pending_swap = self._pending_swap, None
            if job is None:
                return
            job.old, self.backend = self.backend, job.backend
            streams = list(self._streams.values())
        try:
            info = job.backend.info
            self.backend_name = str(job.backend.describe())
            model = {"name": info.name, "classes": list(info.event_names)}
            if self.publisher is not None:  # what late joiners' snapshots say runs
                self.publisher.model = {"model": info.name, "backend": self.backend_name,
                                        "classes": list(info.event_names)}
            message = f"model swapped: {info.name}; classes: {', '.join(info.class_names)}; state reset"
            for stream in streams:
                for kind, payload, capture in stream.swap_model(info):
                    self._emit(stream, kind, payload, capture)
                status = self._status(stream, "running", "info", message)
                status["model"] = model
                self._emit(stream, "status", status, time.monotonic())
            job.result = ModelSwap(info.name, info.event_names, job.path, self.backend_name, len(streams),
                                   job.load_s)
        except Exception as err:  # the caller waits on done: it must hear of this
            log.exception("model swap")
            job.error = err
        finally:
            job.done.set()

    # Messages ------------------------------------------------------------------------------
    def _emit(self, stream: Stream, kind: str, payload: dict[str, Any], capture: float) -> None:
        if self.publisher is not None:
            message = self.publisher.publish(stream.name, kind, payload, capture)
        else:
            message = {"type": kind, "stream": stream.name, "capture_time": capture + self._wall_offset, **payload}
        for listener in self.listeners:
            try:
                listener(message)
            except Exception:
                log.exception("message listener failed")

    def _status(self, stream: Stream, state: str, level: str, message: str) -> dict[str, Any]:
        beat = self._heartbeats.get(stream.name)
        now = time.monotonic()
        frames = stream.aligner.frames.received
        fps = steps_per_s = 0.0
        recent = 0
        if beat is not None:
            dt = max(now - beat.last, 1e-6)
            recent = stream.counters.steps - beat.steps
            fps, steps_per_s = (frames - beat.frames) / dt, recent / dt
        latencies = list(stream.latencies)[-recent:] if recent else []
        return {
            "state": state, "level": level, "message": message, "backend": self.backend_name,
            "fps": round(fps, 2), "steps": stream.counters.steps, "steps_per_s": round(steps_per_s, 2),
            "drops": self._drops(stream), "latency_ms": percentiles_ms(latencies), "sources": stream.source_names(),
        }

    def _drops(self, stream: Stream) -> dict[str, int]:
        drops = stream.drops()
        refused = getattr(self.publisher, "subscriptions_refused", 0)
        if refused:  # subscriptions the publisher would not store (too long, no avbind topic, too many)
            drops["subscriptions_refused"] = refused
        if dropped := getattr(self.publisher, "subscribers_dropped", 0):  # peers shut out (subscription_guard.py)
            drops["subscribers_dropped"] = dropped
        return drops

    def _heartbeat(self, now: float) -> None:
        for stream in self.streams.values():
            beat = self._heartbeats.get(stream.name)
            if beat is None or now - beat.last < self.settings.heartbeat_s:
                continue
            degraded = stream.aligner.degraded_steps > beat.degraded
            state = "degraded" if degraded else "running"
            message = "" if state == "running" else "audio arrived late: steps ran with partial audio"
            if state == "running" and stream.counters.steps and (why := self._resumed.pop(stream.name, None)):
                message = f"running again after: {why}"
            if stream.reconnecting:  # a source is down: say so every heartbeat, not "running"
                down = [s.name for s in stream.sources if id(s) in stream.reconnecting]
                state, message = "reconnecting", f"waiting for {', '.join(down)} to come back"
            self._emit(stream, "status", self._status(stream, state, "info" if state == "running" else "warning",
                                                      message), now)
            beat.last, beat.frames, beat.steps = now, stream.aligner.frames.received, stream.counters.steps
            beat.degraded = stream.aligner.degraded_steps

    def _end(self, stream: Stream, why: str) -> None:
        for kind, payload, capture in stream.take_flushed() + stream.finish():
            self._emit(stream, kind, payload, capture)
        message, level = f"stream {why}", "info"
        if (tail := stream.unstepped_audio_s()) > 1 / stream.rate:
            message = f"{message}; {tail:.1f} s of audio after the video's last frame were not stepped"
            level = "warning"
        self._emit(stream, "status", self._status(stream, "ended", level, message), time.monotonic())
        self.finished_streams[stream.name] = stream
        self._heartbeats.pop(stream.name, None)
