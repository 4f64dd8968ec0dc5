"""``avbind bench --cluster``: what spreading streams over workers buys on this machine.

Measured in one run, so the figures compare with each other and not with another machine's:

* streams held in real time by 1 worker with N threads against N workers with 1 thread each
  (the same criterion as ``avbind bench``'s engine figure: no skipped step, >= 95 % of steps run,
  end-to-end p99 within a bound), found by doubling then bisecting;
* the control round trip (``ping`` and ``list``), as a client sees it;
* the time from a worker's death (SIGKILL) to its stream's next step published from another
  worker, beside the time a freshly added stream takes to publish its first step (the control).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from avbind.realtime.bench import STREAM_FPS, machine, write_bench_clip
from avbind.realtime.cluster.control import request
from avbind.realtime.cluster.serve import Cluster, ServeSettings
from avbind.realtime.engine import percentiles_ms
from avbind.realtime.postprocess.stream_outputs import OutputSettings
from avbind.realtime.scheduler.stream import StreamSettings


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class _Steps(threading.Thread):
    """A subscriber on the cluster's endpoint noting when each stream's steps arrive."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"avbind/")
        self.socket.connect(endpoint)
        self.arrivals: dict[str, list[tuple[float, str]]] = {}  # stream -> (monotonic, type)
        self.workers: dict[str, list[tuple[float, str]]] = {}  # stream -> (monotonic, worker of a status)
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.is_set():
            if not self.socket.poll(50):
                continue
            _, body = self.socket.recv_multipart()
            m = json.loads(body)
            with self.lock:
                self.arrivals.setdefault(m["stream"], []).append((time.monotonic(), m["type"]))
                if m["type"] == "status":
                    self.workers.setdefault(m["stream"], []).append((time.monotonic(), m.get("worker", "")))
        self.socket.close()

    def first_step_after(self, stream: str, t: float, worker: str | None = None) -> float | None:
        with self.lock:
            since = t
            if worker is not None:
                moved = [at for at, w in self.workers.get(stream, []) if at > t and w == worker]
                if not moved:
                    return None
                since = moved[0]
            return next((at for at, kind in self.arrivals.get(stream, []) if at > since and kind == "step"), None)


def _spread_names(cluster: Cluster, streams: int) -> list[str]:
    """Names whose first choice on the ring goes round the workers: the bench measures capacity,
    not the luck of hashing a handful of names (which can put 4 of 4 on one worker)."""
    workers = sorted(cluster.workers)
    names: list[str] = []
    for i in range(streams):
        want = workers[i % len(workers)]
        names.append(next(f"bench{i}-{k}" for k in range(10_000)
                          if cluster.placement.candidates(f"bench{i}-{k}")[0] == want))
    return names


def _held(cluster: Cluster, clip: Path, streams: int, seconds: float, rate_hz: float, max_p99_ms: float) -> dict:
    names = _spread_names(cluster, streams)
    for name in names:
        cluster.add(name, str(clip), None)
    time.sleep(seconds)
    table = {s["name"]: s for s in cluster.list()["streams"]}
    stats = [cluster.worker_stream_stats(name) for name in names]
    for name in names:
        cluster.remove(name)
    steps = sum(s["steps"] for s in stats)
    skipped = sum(s["steps_skipped"] for s in stats)
    latencies = [x for s in stats for x in s["latencies_s"]]
    latency = percentiles_ms(latencies)
    expected = int(streams * seconds * rate_hz)
    held = skipped == 0 and steps >= 0.95 * expected and latency["p99"] is not None and latency["p99"] <= max_p99_ms
    return {"streams": streams, "steps": steps, "steps_expected": expected, "steps_skipped": skipped,
            "latency_ms": latency, "held": bool(held),
            "workers": sorted({table[n]["worker"] for n in names if n in table and table[n]["worker"]})}


def _most_held(cluster: Cluster, clip: Path, seconds: float, rate_hz: float, max_streams: int,
               max_p99_ms: float) -> tuple[int, list[dict]]:
    runs: list[dict] = []
    held, failed, n = 0, max_streams + 1, 1
    while n < failed and n > held:
        run = _held(cluster, clip, n, seconds, rate_hz, max_p99_ms)
        runs.append(run)
        if run["held"]:
            held = n
        else:
            failed = n
        n = min(2 * n, max_streams) if failed > max_streams and n < max_streams else (held + failed) // 2
    return held, sorted(runs, key=lambda r: r["streams"])


def proxy_throughput(messages: int = 50_000) -> dict[str, Any]:
    """Messages per second through the proxy's renumbering, one worker socket to one subscriber,
    each a real segment-sized JSON message: the ceiling of one driver's proxy."""
    from avbind.realtime.cluster.proxy import SeqProxy

    context = zmq.Context.instance()
    proxy = SeqProxy("tcp://127.0.0.1:*", context=context)
    proxy.start()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(proxy.bound[0])
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(proxy.frontend_bound)
    time.sleep(0.5)
    body = {"schema_version": 1, "type": "segment", "stream": "cam", "seq": 0, "capture_time": 0.0,
            "publish_time": 0.0, "segment": 0, "start": 0.0, "end": 1.0, "label": "x" * 30, "class_index": 1,
            "confidence": 0.5, "is_background": False, "top": [{"label": "x" * 30, "score": 0.5}] * 3,
            "steps": 5, "degraded_steps": 0}
    received = 0
    started = time.perf_counter()
    for i in range(messages):
        body["seq"] = i
        pub.send_multipart([b"avbind/cam/segment", json.dumps(body).encode(), b"1:w0:1"])
        while sub.poll(0):
            sub.recv_multipart()
            received += 1
    while received < messages and sub.poll(2000):
        sub.recv_multipart()
        received += 1
    seconds = time.perf_counter() - started
    pub.close()
    sub.close()
    proxy.close()
    return {"messages": messages, "received": received, "seconds": round(seconds, 3),
            "messages_per_s": round(received / seconds), "note": "sender, proxy and subscriber on this machine"}


def run_cluster_bench(model: str | None = None, cores: int | None = None, seconds: float = 8.0, max_streams: int = 32,
                      max_p99_ms: float = 100.0, round_trips: int = 50, kills: int = 2) -> dict[str, Any]:
    import ray

    cores = cores or len(os.sched_getaffinity(0))
    os.environ.setdefault("RAY_worker_niceness", "0")  # as avbind serve does (see serve.py)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    report: dict[str, Any] = {"machine": machine(), "criterion": f"no skipped step, >= 95% of steps run, "
                                                                 f"end-to-end p99 <= {max_p99_ms:g} ms",
                              "seconds_per_run": seconds, "configurations": []}
    report["proxy"] = proxy_throughput()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            clip = write_bench_clip(Path(workdir) / "bench-camera.mp4", seconds=int(np.ceil(seconds)) + 3)
            # The baseline, in this run: one engine in this process, no Ray, all cores.
            from avbind.models.weights import default_onnx
            from avbind.realtime.backends import create_backend
            from avbind.realtime.bench import held_real_time, run_engine

            backend = create_backend(model or default_onnx(), "onnxruntime", intra_op_threads=cores)
            held, runs, n, failed = 0, [], 1, max_streams + 1
            while n < failed and n > held:
                run = run_engine(backend, clip, n, seconds)
                runs.append({k: run[k] for k in ("streams", "steps", "steps_expected", "steps_skipped", "latency_ms")})
                if held_real_time(run, max_p99_ms):
                    held = n
                else:
                    failed = n
                n = min(2 * n, max_streams) if failed > max_streams and n < max_streams else (held + failed) // 2
            report["baseline_one_engine_in_process"] = {"threads": cores, "streams_held": held,
                                                         "runs": sorted(runs, key=lambda r: r["streams"])}
            del backend
            stream = StreamSettings(outputs=OutputSettings(publish_steps=True))
            for workers, threads in ((1, cores), (cores, 1)):
                settings = ServeSettings(workers=workers, threads=threads, capacity=max_streams, model=model,
                                         publish=[_free_endpoint()], control=_free_endpoint(), stream=stream,
                                         max_restarts=-1)
                cluster = Cluster(settings)
                cluster.start()
                try:
                    rate = cluster.step_rate_hz()
                    held, runs = _most_held(cluster, clip, seconds, rate, max_streams, max_p99_ms)
                    entry: dict[str, Any] = {"workers": workers, "threads_per_worker": threads,
                                             "streams_held": held, "runs": runs}
                    if workers > 1:
                        entry.update(_faults(cluster, clip, round_trips, kills))
                    report["configurations"].append(entry)
                finally:
                    cluster.stop()
    finally:
        ray.shutdown()
    return report


def _faults(cluster: Cluster, clip: Path, round_trips: int, kills: int) -> dict[str, Any]:
    """Control round trips, a fresh stream's start, and death-to-publishing-again, on a running cluster."""
    control = cluster.control.bound
    timings: dict[str, list[float]] = {"ping": [], "list": []}
    for cmd in timings:
        for _ in range(round_trips):
            t = time.perf_counter()
            request(control, {"cmd": cmd})
            timings[cmd].append(time.perf_counter() - t)
    steps = _Steps(cluster.proxy.bound[0])
    steps.start()
    time.sleep(0.5)
    starts, recoveries = [], []
    for k in range(kills):
        name = f"victim{k}"
        asked = time.monotonic()
        placed = cluster.add(name, "synthetic", None)
        while steps.first_step_after(name, asked) is None and time.monotonic() < asked + 60:
            time.sleep(0.01)
        first = steps.first_step_after(name, asked)
        if first is not None:
            starts.append(first - asked)
        worker = cluster.workers[placed["worker"]]
        pid = worker.pid
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 60:
            target = cluster.streams.get(name)
            if target is not None and target.worker not in (None, worker.id):
                again = steps.first_step_after(name, killed, target.worker)
                if again is not None:
                    recoveries.append(again - killed)
                    break
            time.sleep(0.01)
        cluster.remove(name)
        deadline = time.monotonic() + 120  # wait for Ray to bring the worker back before the next kill
        while not (worker.alive and worker.pid != pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    steps.stopped.set()
    return {
        "control_round_trip_ms": {cmd: percentiles_ms(v) for cmd, v in timings.items()},
        "fresh_stream_first_step_s": [round(x, 3) for x in starts],
        "worker_death_to_publishing_again_s": [round(x, 3) for x in recoveries],
        "kills": kills,
    }


def format_cluster_bench(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"cluster bench on {m['cpu']} ({m['cores']} cores); {STREAM_FPS} fps camera-like streams, "
             f"{report['criterion']}"]
    base = report.get("baseline_one_engine_in_process")
    if base:
        lines.append(f"  baseline, one engine in this process ({base['threads']} threads, no Ray): "
                     f"{base['streams_held']} streams held")
    if "proxy" in report:
        lines.append(f"  proxy: {report['proxy']['messages_per_s']} messages/s renumbered and forwarded")
    for c in report["configurations"]:
        lines.append(f"  {c['workers']} worker(s) x {c['threads_per_worker']} thread(s): "
                     f"{c['streams_held']} streams held")
        for r in c["runs"]:
            lines.append(f"    {r['streams']:>3} streams: {r['steps']}/{r['steps_expected']} steps, "
                         f"{r['steps_skipped']} skipped, p99 {r['latency_ms']['p99']} ms, workers {r['workers']}")
        if "control_round_trip_ms" in c:
            rt = c["control_round_trip_ms"]
            lines.append(f"  control round trip: ping p50 {rt['ping']['p50']} ms, list p50 {rt['list']['p50']} ms "
                         f"(p99 {rt['list']['p99']} ms)")
            lines.append(f"  worker killed -> its stream publishing again: {c['worker_death_to_publishing_again_s']} s"
                         f" (a fresh stream's first step: {c['fresh_stream_first_step_s']} s)")
    return "\n".join(lines)
