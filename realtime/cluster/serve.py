"""The driver of ``avbind serve``: a Ray cluster of engine workers behind one control endpoint and
one published endpoint, and what happens when a worker dies.

* Workers are Ray actors (long-lived processes with state, restarted by Ray after a crash); each
  runs an :class:`~avbind.realtime.cluster.worker.EngineWorker`.
* Streams are placed by :class:`~avbind.realtime.cluster.placement.Placement`.
* Every worker publishes into the driver's :class:`~avbind.realtime.cluster.proxy.SeqProxy`.
* A worker's death is seen on its liveness link (the kernel closes a dead process's socket at
  once). Its streams are placed on the surviving workers straight away, resuming files where
  their last published segment ended, with a fresh state and a ``reconnecting`` status that says
  why. Ray restarts the actor; when it is back it rejoins the ring and takes back the streams
  that hash to it, as any new worker would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from avbind.realtime.cluster.control import ControlServer
from avbind.realtime.cluster.placement import Placement, PlacementFullError
from avbind.realtime.cluster.proxy import SeqProxy
from avbind.realtime.engine import EngineSettings
from avbind.realtime.publish.messages import check_stream_name
from avbind.realtime.publish.security import Curve
from avbind.realtime.scheduler.stream import StreamSettings

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0  # s a command to one worker may take (opening a source included)
POLL_S = 0.5  # s between the driver's polls of its workers' stream tables


@dataclass
class ServeSettings:
    workers: int = 2
    capacity: int = 8  # streams per worker (``avbind bench``'s streams-held figure is the guide)
    threads: int = 1  # ONNX Runtime intra-op threads per worker (and the CPUs Ray reserves for it)
    model: str | None = None
    backend: str = "auto"
    publish: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:5556"])
    control: str = "tcp://127.0.0.1:5557"
    ray_address: str | None = None  # None: start a local cluster; "auto" or HOST:PORT: join one
    num_cpus: int | None = None  # CPUs of a local cluster (None: Ray's count)
    max_restarts: int = -1  # Ray restarts of a worker actor (-1: always)
    bind_host: str | None = None  # where workers reach the driver (default: this node's address)
    gpus_per_worker: float | None = None  # None: 1 where the cluster has a GPU per worker, else 0
    engine: EngineSettings = field(default_factory=EngineSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    speed: float = 1.0
    reconnect_for_s: float | None = 120.0
    driver_lost_s: float = 5.0
    curve: Curve | None = None  # encrypt the published endpoint (security.py)
    curve_allow: str | None = None  # only these subscribers' public keys


@dataclass
class _Worker:
    id: str
    actor: Any
    liveness: zmq.Socket
    monitor: zmq.Socket
    endpoint: str
    pid: int | None = None
    alive: bool = False
    deaths: int = 0
    restarts: int = 0
    report: list[dict[str, Any]] = field(default_factory=list)  # its last streams() reply


@dataclass
class _Stream:
    name: str
    video: str | None
    audio: str | None
    worker: str | None = None
    epoch: int = 0
    state: str = "starting"
    message: str = ""
    moves: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # the worker's last description of it


class Cluster:
    """Start with :meth:`start`, stop with :meth:`stop`; every public method is thread-safe."""

    def __init__(self, settings: ServeSettings) -> None:
        if settings.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {settings.workers}")
        self.settings = settings
        self.placement = Placement(settings.capacity)
        self.workers: dict[str, _Worker] = {}
        self.streams: dict[str, _Stream] = {}
        self.ended: dict[str, _Stream] = {}
        self.events: list[dict[str, Any]] = []  # what the driver did about faults, for people and tests
        self._epochs: dict[str, int] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._context = zmq.Context.instance()
        self._started_ray = False
        self.proxy: SeqProxy | None = None
        self.control: ControlServer | None = None
        self._threads: list[threading.Thread] = []

    # -- start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        import ray

        from avbind.realtime.cluster.worker import EngineWorker

        s = self.settings
        if ray.is_initialized():  # a caller's cluster (the bench, a notebook): use it, leave it running
            host = s.bind_host or "127.0.0.1"
        elif s.ray_address is None:
            # Ray runs workers at niceness 15 by default (so its own daemons win); a real-time
            # engine must not lose the CPU to every ordinary process. `ray start` takes the same
            # variable on the nodes of a joined cluster.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=s.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=True, configure_logging=False)
            self._started_ray = True
            host = s.bind_host or "127.0.0.1"
        else:
            ray.init(address=s.ray_address, logging_level=logging.WARNING, log_to_driver=True, configure_logging=False)
            host = s.bind_host or ray.util.get_node_ip_address()
        self.proxy = SeqProxy(s.publish, frontend=f"tcp://{host}:*", context=self._context, curve=s.curve,
                              curve_allow=s.curve_allow)
        self.proxy.start()
        gpus = s.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= s.workers else 0.0
        actor_class = ray.remote(EngineWorker).options(
            max_restarts=s.max_restarts, max_task_retries=0, max_concurrency=8, num_cpus=s.threads, num_gpus=gpus)
        for i in range(s.workers):
            wid = f"w{i}"
            liveness = self._context.socket(zmq.PAIR)
            liveness.setsockopt(zmq.LINGER, 0)
            liveness.setsockopt(zmq.HEARTBEAT_IVL, 500)
            liveness.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
            monitor = liveness.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            liveness.bind(f"tcp://{host}:*")
            endpoint = liveness.getsockopt_string(zmq.LAST_ENDPOINT)
            actor = actor_class.remote(wid, self.proxy.frontend_bound, endpoint, s.model, s.backend, s.threads,
                                       s.engine, s.stream, s.speed, s.reconnect_for_s, s.driver_lost_s)
            self.workers[wid] = _Worker(wid, actor, liveness, monitor, endpoint)
        for worker in self.workers.values():  # constructor errors (a bad model file) surface here
            info = ray.get(worker.actor.ping.remote(), timeout=300)
            worker.pid, worker.alive = info["pid"], True
            self.placement.add_worker(worker.id)
        self.control = ControlServer(s.control, self.handle, self._context)
        self.control.start()
        for target, name in ((self._watch_liveness, "avbind-liveness"), (self._poll_workers, "avbind-poll")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop every stream (their ``ended`` statuses go out), every worker, then Ray if we started it."""
        import ray

        self._stopping.set()
        if self.control is not None:
            self.control.close()
        refs = [w.actor.stop.remote() for w in self.workers.values() if w.alive]
        try:
            ray.get(refs, timeout=15)
        except Exception as err:  # a worker that cannot stop cleanly is killed below all the same
            log.warning("stopping workers: %s", err)
        time.sleep(0.3)  # the proxy forwards the last statuses
        for worker in self.workers.values():
            with contextlib.suppress(Exception):  # already gone
                ray.kill(worker.actor, no_restart=True)
        for thread in self._threads:
            thread.join(timeout=3)
        for worker in self.workers.values():
            worker.monitor.close()
            worker.liveness.close()
        if self.proxy is not None:
            self.proxy.close()
        if self._started_ray:
            ray.shutdown()

    # -- commands --------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "ping":
            return {"workers": len(self.workers), "publish": self.proxy.bound if self.proxy else []}
        if cmd == "list":
            return self.list()
        if cmd == "add":
            return self.add(str(request.get("name", "")), request.get("video"), request.get("audio"))
        if cmd == "remove":
            return self.remove(str(request.get("name", "")))
        raise ValueError(f"unknown command {cmd!r}; commands: add, remove, list, ping")

    def add(self, name: str, video: str | None, audio: str | None) -> dict[str, Any]:
        import ray

        check_stream_name(name)
        if video is None and audio is None:
            raise ValueError("a stream needs a video source, an audio source or both")
        with self._lock:
            if name in self.streams:
                raise ValueError(f"stream {name!r} already exists (on worker {self.streams[name].worker})")
            worker = self.placement.add_stream(name)  # PlacementFullError is a RuntimeError: a refusal
            stream = _Stream(name, video, audio, worker, self._next_epoch(name))
            self.streams[name] = stream
            self.ended.pop(name, None)
        try:
            ray.get(self.workers[worker].actor.add.remote(name, video, audio, stream.epoch), timeout=CALL_TIMEOUT_S)
        except Exception as err:
            with self._lock:
                self.streams.pop(name, None)
                self.placement.remove_stream(name)
            raise ValueError(f"cannot start stream {name!r} on worker {worker}: {_reason(err)}") from None
        return {"stream": name, "worker": worker, "pid": self.workers[worker].pid}

    def remove(self, name: str) -> dict[str, Any]:
        import ray

        with self._lock:
            stream = self.streams.pop(name, None)
            if stream is None:
                known = ", ".join(sorted(self.streams)) or "none"
                raise ValueError(f"no stream named {name!r} (streams: {known})")
            self.placement.remove_stream(name)
        worker = self.workers.get(stream.worker) if stream.worker else None
        if worker is not None and worker.alive:
            try:
                ray.get(worker.actor.remove.remote(name), timeout=CALL_TIMEOUT_S)
            except Exception as err:
                log.warning("removing %s from %s: %s", name, worker.id, _reason(err))
        return {"stream": name, "worker": stream.worker}

    def list(self) -> dict[str, Any]:
        self._refresh()
        with self._lock:
            streams = [self._describe(s) for s in sorted(self.streams.values(), key=lambda s: s.name)]
            streams += [self._describe(s) for s in sorted(self.ended.values(), key=lambda s: s.name)]
            workers = []
            for w in self.workers.values():
                held = self.placement.load(w.id)
                rate = sum(s.info.get("steps_per_s", 0.0) for s in self.streams.values() if s.worker == w.id)
                workers.append({"worker": w.id, "pid": w.pid, "alive": w.alive, "streams": held,
                                "capacity": self.settings.capacity, "load": round(held / self.settings.capacity, 3),
                                "steps_per_s": round(rate, 2), "deaths": w.deaths, "restarts": w.restarts})
        return {"streams": streams, "workers": workers}

    def worker_stream_stats(self, name: str) -> dict[str, Any]:
        """Counters and every step latency of one stream, from its worker (for ``avbind bench``)."""
        import ray

        with self._lock:
            stream = self.streams[name]
            worker = self.workers[stream.worker]
        return ray.get(worker.actor.stats.remote(name), timeout=CALL_TIMEOUT_S)

    def step_rate_hz(self) -> float:
        import ray

        worker = next(iter(self.workers.values()))
        return float(ray.get(worker.actor.ping.remote(), timeout=CALL_TIMEOUT_S)["step_rate_hz"])

    def _describe(self, s: _Stream) -> dict[str, Any]:
        worker = self.workers.get(s.worker) if s.worker else None
        return {"name": s.name, "worker": s.worker, "pid": worker.pid if worker else None, "state": s.state,
                "message": s.message, "steps": s.info.get("steps", 0), "position_s": s.info.get("position_s"),
                "video": s.video, "audio": s.audio, "moves": s.moves,
                "steps_per_s": s.info.get("steps_per_s", 0.0), "latency_ms_p50": s.info.get("latency_ms_p50")}

    def _next_epoch(self, name: str) -> int:
        self._epochs[name] = self._epochs.get(name, 0) + 1
        return self._epochs[name]

    # -- keeping the table current -----------------------------------------------------------
    def _refresh(self) -> None:
        import ray

        live = [w for w in self.workers.values() if w.alive]
        refs = [w.actor.streams.remote() for w in live]
        now = time.monotonic()
        for worker, ref in zip(live, refs, strict=True):
            try:
                report = ray.get(ref, timeout=5)
            except Exception:
                continue  # dead or restarting: the liveness link handles it
            with self._lock:
                for entry in report:
                    stream = self.streams.get(entry["name"])
                    if stream is None or stream.worker != worker.id or entry.get("epoch") != stream.epoch:
                        continue
                    previous = stream.info
                    at, steps = previous.get("_at"), previous.get("_steps", 0)
                    entry["steps_per_s"], entry["_at"], entry["_steps"] = previous.get("steps_per_s", 0.0), at, steps
                    if at is None or entry["steps"] < steps:
                        entry["_at"], entry["_steps"] = now, entry["steps"]
                    elif now - at >= 1.0:  # a rate over at least a second, however often anyone asks
                        entry["steps_per_s"] = round((entry["steps"] - steps) / (now - at), 2)
                        entry["_at"], entry["_steps"] = now, entry["steps"]
                    stream.info, stream.state, stream.message = entry, entry["state"], entry["message"]
                    if entry["state"] == "ended":  # a file played to its end: off the ring
                        self.streams.pop(stream.name, None)
                        self.placement.remove_stream(stream.name)
                        self.ended[stream.name] = stream

    def _poll_workers(self) -> None:
        while not self._stopping.wait(POLL_S):
            try:
                self._refresh()
            except Exception:
                log.exception("polling workers")

    # -- faults ----------------------------------------------------------------------------------
    def _watch_liveness(self) -> None:
        poller = zmq.Poller()
        by_socket = {}
        for worker in self.workers.values():
            poller.register(worker.monitor, zmq.POLLIN)
            by_socket[worker.monitor] = worker
        while not self._stopping.is_set():
            try:
                ready = dict(poller.poll(100))
            except zmq.ZMQError:
                return
            for socket in ready:
                worker = by_socket[socket]
                try:
                    event = recv_monitor_message(socket)["event"]
                except zmq.ZMQError:
                    continue
                if self._stopping.is_set():
                    return
                if event == zmq.EVENT_DISCONNECTED and worker.alive:
                    self._spawn(self._worker_lost, worker, "exited")
                elif event == zmq.EVENT_ACCEPTED and not worker.alive and worker.pid is not None:
                    self._spawn(self._worker_back, worker)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception:
                log.exception("%s", target.__name__)

        threading.Thread(target=run, daemon=True).start()

    def _note(self, **event: Any) -> None:
        event["time"] = time.time()
        self.events.append(event)
        log.warning("%s", {k: v for k, v in event.items() if k != "time"})

    def _worker_lost(self, worker: _Worker, why: str) -> None:
        """Place the dead worker's streams on the others, at once; Ray restarts the worker meanwhile."""
        with self._lock:
            if not worker.alive or self._stopping.is_set():
                return
            worker.alive, worker.deaths = False, worker.deaths + 1
            self._note(event="worker_lost", worker=worker.id, pid=worker.pid)
            moves = self.placement.remove_worker(worker.id)
            plans = []
            for name, target in moves.items():
                stream = self.streams[name]
                reason = f"worker {worker.id} (pid {worker.pid}) {why}"
                stream.worker, stream.moves = target, stream.moves + 1
                if target is None:
                    stream.state, stream.message = "reconnecting", f"{reason}; waiting for a worker with room"
                    continue
                plans.append((stream, target, f"{reason}; moved to worker {target}"))
        self._start_moved(plans)

    def _worker_back(self, worker: _Worker) -> None:
        """A restarted worker: back on the ring, taking the streams that now hash to it."""
        import ray

        deadline = time.monotonic() + 300
        while True:  # its socket connects from its constructor, a moment before Ray calls it alive
            try:
                info = ray.get(worker.actor.ping.remote(), timeout=30)
                break
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if self._stopping.is_set() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        ray.get(worker.actor.retain.remote([]), timeout=CALL_TIMEOUT_S)  # a worker back after a partition
        with self._lock:
            if worker.alive or self._stopping.is_set():
                return
            worker.pid, worker.alive, worker.restarts = info["pid"], True, worker.restarts + 1
            self._note(event="worker_back", worker=worker.id, pid=worker.pid)
            taken = self.placement.add_worker(worker.id)
            unplaced = [s for s in self.streams.values() if s.worker is None]
            for stream in unplaced:
                try:
                    stream.worker = self.placement.add_stream(stream.name)
                except PlacementFullError:
                    break
        # Stop the taken streams where they run first, so their last segment is published before
        # the new worker reads where to resume.
        stops = []
        for name, source in taken.items():
            if self.workers[source].alive:
                stops.append(self.workers[source].actor.remove.remote(name, False))
        for ref in stops:
            try:
                ray.get(ref, timeout=CALL_TIMEOUT_S)
            except Exception as err:
                log.warning("moving a stream: %s", _reason(err))
        time.sleep(0.1)
        plans = []
        with self._lock:
            for name, source in taken.items():
                stream = self.streams.get(name)
                if stream is not None:
                    stream.moves += 1
                    plans.append((stream, worker.id, f"worker {worker.id} rejoined; moved from worker {source}"))
            for stream in unplaced:
                if stream.worker is not None:
                    plans.append((stream, stream.worker, f"placed on worker {stream.worker}"))
        self._start_moved(plans)

    def _start_moved(self, plans: list[tuple[_Stream, str, str]]) -> None:
        """Start moved streams on their new workers, all at once, where their timeline was."""
        import ray

        calls = []
        with self._lock:
            for stream, target, reason in plans:
                stream.epoch = self._next_epoch(stream.name)
                position = self.proxy.position(stream.name) if self.proxy else 0.0
                if self.proxy is not None:
                    self.proxy.close_open_event(stream.name, position, reason)
                stream.state, stream.message = "reconnecting", reason
                ref = self.workers[target].actor.add.remote(stream.name, stream.video, stream.audio, stream.epoch,
                                                             position, reason)
                calls.append((stream, target, ref))
                self._note(event="stream_moved", stream=stream.name, to=target, resume_s=position, reason=reason)
        for stream, target, ref in calls:
            try:
                ray.get(ref, timeout=CALL_TIMEOUT_S)
            except Exception as err:
                with self._lock:
                    stream.state, stream.message = "error", f"cannot resume on worker {target}: {_reason(err)}"
                log.warning("stream %s: %s", stream.name, stream.message)


def _reason(err: BaseException) -> str:
    """The worker's own error text, without Ray's traceback wrapping."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return str(cause)
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__

