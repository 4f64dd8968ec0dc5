"""One engine worker: the body of a Ray actor in ``avbind serve``.

A worker owns one :class:`~avbind.realtime.engine.Engine`, one backend session and the streams
placed on it. A stream's recurrent state lives in the engine here and never crosses the network:
the driver sends only commands (add, remove, list) and the engine publishes into the driver's
proxy. This module imports neither Ray nor torch, so it can be tested as a plain object.

The worker also keeps a ZeroMQ PAIR connection to the driver. Its sole purpose is liveness: the
driver learns of a worker's death the moment the kernel closes the dead process's socket (well
under Ray's own detection time), and a worker whose driver is gone (its connection lost and not
back within ``driver_lost_s``) exits instead of running on as an orphan.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from avbind.realtime.backends import create_backend
from avbind.realtime.engine import Engine, EngineSettings
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.scheduler.stream import StreamSettings

log = logging.getLogger(__name__)

HEARTBEAT_IVL_MS = 500  # ZeroMQ heartbeats on the liveness link: a dead machine, not only a dead process
HEARTBEAT_TIMEOUT_MS = 3000


class WorkerPublisher(Publisher):
    """Connects into the proxy, adds the worker id to status messages and an origin frame to all."""

    def __init__(self, frontend: str, worker_id: str, context: zmq.Context | None = None) -> None:
        super().__init__(frontend, context=context, connect=True)
        self.worker_id = worker_id
        self.origins: dict[str, bytes] = {}  # stream -> origin frame (placement epoch, worker, pid)

    def publish(self, stream: str, kind: str, payload: dict[str, Any], capture: float) -> dict[str, Any]:
        if kind == "status":
            payload = {**payload, "worker": self.worker_id}
        return super().publish(stream, kind, payload, capture)

    def _frames(self, name: str, message: dict[str, Any]) -> list[bytes]:
        stream = message["stream"]
        origin = self.origins.get(stream, f"0:{self.worker_id}:{os.getpid()}".encode())
        return [*super()._frames(name, message), origin]


def check_source(spec: str) -> None:
    """Refuse, with the reason, a local file this worker cannot open; other sources (cameras,
    microphones, the synthetic stream, network URLs, which may come up later) are the source's
    own business once the stream runs."""
    import re

    import av

    from avbind.realtime.sources.media_stream import not_regular_file, redact_credentials

    spec = spec.strip()
    if (re.fullmatch(r"\d+|/dev/video\d+|mic(:.*)?|synthetic(:\d+)?", spec)
            or (re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", spec) and not spec.startswith("file://"))):
        return
    path = spec.removeprefix("file://")
    if not Path(path).exists():
        raise ValueError(f"{redact_credentials(spec)}: no such media file (on this worker's machine)")
    if (problem := not_regular_file(path)) is not None:
        raise ValueError(f"{spec}: {problem}")
    try:
        with av.open(path, timeout=(5.0, 5.0)) as container:
            if not container.streams.video and not container.streams.audio:
                raise ValueError(f"{spec}: no audio or video stream")
    except av.error.FFmpegError as err:
        raise ValueError(f"{spec}: cannot open ({err.strerror or err})") from None


class EngineWorker:
    """Created once per Ray actor process (again after each restart, with the same arguments)."""

    def __init__(
        self, worker_id: str, frontend: str, liveness: str, model: str | None = None, backend: str = "auto",
        threads: int = 1, engine_settings: EngineSettings | None = None,
        stream_settings: StreamSettings | None = None, speed: float = 1.0, reconnect_for_s: float | None = 120.0,
        driver_lost_s: float = 5.0,
    ) -> None:
        logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s worker {worker_id} %(levelname)s %(message)s")
        if model is None:
            from avbind.models.weights import default_onnx

            model = str(default_onnx())
        options: dict[str, Any] = {}
        if threads and backend in ("auto", "onnxruntime") and Path(model).suffix == ".onnx":
            options["intra_op_threads"] = threads
        self.worker_id = worker_id
        self.pid = os.getpid()
        self.started = time.time()
        self._context = zmq.Context()
        self.backend = create_backend(model, backend, **options)
        self.publisher = WorkerPublisher(frontend, worker_id, self._context)
        self.engine = Engine(self.backend, self.publisher, engine_settings or EngineSettings())
        self.stream_settings = stream_settings or StreamSettings()
        self.speed, self.reconnect_for_s = speed, reconnect_for_s
        self._states: dict[str, str] = {}  # stream -> state of its last status
        self._messages: dict[str, str] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._epochs: dict[int, int] = {}  # id(Stream) -> the placement epoch it runs under
        self._lock = threading.Lock()
        self.engine.listeners.append(self._on_message)
        self.engine.start()
        self._driver_lost_s = driver_lost_s
        self._closing = threading.Event()
        # Last: the driver takes an accepted liveness connection as "this worker is up".
        self._liveness = self._context.socket(zmq.PAIR)
        self._liveness.setsockopt(zmq.LINGER, 0)
        self._liveness.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        self._liveness.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        monitor = self._liveness.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._liveness.connect(liveness)
        threading.Thread(target=self._watch_driver, args=(monitor,), name="avbind-driver-watch", daemon=True).start()

    # -- the driver's link -------------------------------------------------------------------
    def _watch_driver(self, monitor: zmq.Socket) -> None:
        lost_at: float | None = None
        connected_once = False
        while not self._closing.is_set():
            if monitor.poll(200):
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_CONNECTED:
                    connected_once, lost_at = True, None
                elif event == zmq.EVENT_DISCONNECTED:
                    lost_at = time.monotonic()
            waiting = time.monotonic() - (lost_at if lost_at is not None else self.started_monotonic)
            lost = (lost_at is not None or not connected_once) and waiting > self._driver_lost_s
            if lost and not self._closing.is_set():
                log.error("lost the driver for %.1f s: stopping this worker", waiting)
                os._exit(3)

    @property
    def started_monotonic(self) -> float:
        return time.monotonic() - (time.time() - self.started)

    # -- what the driver calls ---------------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return {"worker": self.worker_id, "pid": self.pid, "streams": len(self.engine.streams),
                "step_rate_hz": self.backend.info.step_rate_hz}

    def stats(self, name: str) -> dict[str, Any]:
        stream = self.engine.streams[name]
        return {"steps": stream.counters.steps, "steps_skipped": stream.counters.steps_skipped,
                "latencies_s": list(stream.latencies)}

    def add(self, name: str, video: str | None, audio: str | None, epoch: int, start_s: float = 0.0,
            resumed: str | None = None) -> dict[str, Any]:
        """Open the stream's sources here and start it; ValueError names a source that cannot open."""
        from avbind.realtime.sources.open_source import stream_sources

        for spec in (video, audio):
            if spec is not None:
                check_source(spec)
        sources = stream_sources(video, audio, self.backend.info.features.sample_rate, self.speed,
                                 self.reconnect_for_s, start_s)
        with self._lock:
            self._specs[name] = {"video": video, "audio": audio, "epoch": epoch, "start_s": start_s}
            self._states[name] = "reconnecting" if resumed else "starting"
        self.publisher.origins[name] = f"{epoch}:{self.worker_id}:{self.pid}".encode()
        stream = self.engine.add_stream(name, sources, self.stream_settings, resumed=resumed)
        with self._lock:
            self._epochs[id(stream)] = epoch  # a re-added name must not inherit an old run's report
        return self.ping()

    def remove(self, name: str, publish: bool = True) -> dict[str, Any]:
        stream = self.engine.remove_stream(name, publish=publish)
        self.engine.finished_streams.pop(name, None)  # removed by the driver: nothing to report
        with self._lock:
            self._specs.pop(name, None)
            self._epochs.pop(id(stream), None)
        return self.ping()

    def retain(self, names: list[str]) -> dict[str, Any]:
        """Stop, silently, every stream not in ``names``: a worker cut off from the driver for a while
        may still run streams the driver has since placed elsewhere."""
        for name in list(self.engine.streams):
            if name not in names:
                self.remove(name, publish=False)
        return self.ping()

    def streams(self) -> list[dict[str, Any]]:
        """Every stream here, running or ended since the last call (ended ones are reported once)."""
        out = []
        running = self.engine.streams
        for name, stream in running.items():
            out.append(self._describe(name, stream, ended=False))
        for name, stream in list(self.engine.finished_streams.items()):
            self.engine.finished_streams.pop(name, None)
            out.append(self._describe(name, stream, ended=True))
        return out

    def _describe(self, name: str, stream: Any, ended: bool) -> dict[str, Any]:
        with self._lock:
            state = "ended" if ended else self._states.get(name, "starting")
            message = self._messages.get(name, "")
            epoch = self._epochs.pop(id(stream), None) if ended else self._epochs.get(id(stream))
            if ended:
                self._states.pop(name, None)
                self._specs.pop(name, None)
        latency = list(stream.latencies)[-200:]
        return {
            "name": name, "worker": self.worker_id, "pid": self.pid, "epoch": epoch, "state": state, "message": message,
            "steps": stream.counters.steps, "sources": stream.source_names(), "drops": stream.drops(),
            "position_s": None if stream.cursor is None else round(stream.cursor / stream.rate, 3),
            "latency_ms_p50": round(1000 * sorted(latency)[len(latency) // 2], 3) if latency else None,
        }

    def stop(self) -> None:
        """Stop every stream (each publishes its ``ended`` status), then the sockets."""
        self._closing.set()
        self.engine.stop()
        time.sleep(0.2)  # let the ended statuses leave before the socket closes
        self.publisher.close()
        self._liveness.close()

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "status":
            with self._lock:
                self._states[message["stream"]] = message["state"]
                self._messages[message["stream"]] = message["message"]
