"""``avbind serve`` on a real local Ray cluster (``--num-cpus 2``), driven through its real control
socket and CLI, watched by a real ZeroMQ subscriber on its one published endpoint.

The Ray tests share one server (starting Ray costs ~15 s here) and run in file order: four streams
to their end, control commands, a worker killed mid-stream, and SIGTERM. Placement and the proxy's
renumbering are also tested on their own, without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zmq
from avbind_testing import avbind_exe, free_port, wait_for

from avbind.realtime.cluster.placement import Placement, PlacementFullError
from avbind.realtime.cluster.proxy import SeqProxy

# -- placement, no Ray ---------------------------------------------------------------------------


def test_placement_spreads_streams_and_moves_few_when_workers_change() -> None:
    placement = Placement(capacity=1000, workers=["w0", "w1", "w2"])
    names = [f"cam{i}" for i in range(300)]
    for name in names:
        placement.add_stream(name)
    loads = [placement.load(w) for w in ("w0", "w1", "w2")]
    assert min(loads) > 60, loads  # virtual nodes spread them
    before = dict(placement.assigned)
    moved = placement.add_worker("w3")
    assert moved and all(placement.assigned[s] == "w3" for s in moved)
    assert all(placement.assigned[s] == before[s] for s in names if s not in moved)  # no other stream moves
    assert len(moved) < len(names) / 2
    lost = placement.remove_worker("w1")
    assert set(lost) == {s for s, w in before.items() if w == "w1" and s not in moved}
    assert all(w in ("w0", "w2", "w3") for w in lost.values())
    back = placement.add_worker("w1")
    assert set(back) == set(lost)  # the returning worker takes back exactly what hashes to it


def test_placement_capacity_passes_streams_on_and_refuses_when_full() -> None:
    placement = Placement(capacity=2, workers=["w0", "w1"])
    for i in range(4):
        placement.add_stream(f"s{i}")
    assert placement.load("w0") == placement.load("w1") == 2
    with pytest.raises(PlacementFullError, match="all taken"):
        placement.add_stream("s4")
    with pytest.raises(ValueError, match="capacity"):
        Placement(capacity=0)
    moves = placement.remove_worker("w0")
    assert list(moves.values()) == [None, None]  # nowhere to go: left unplaced, not dropped silently


# -- the proxy, no Ray -----------------------------------------------------------------------------


def _worker_message(stream: str, kind: str, seq: int, **payload) -> bytes:
    return json.dumps({"schema_version": 1, "type": kind, "stream": stream, "seq": seq, "capture_time": 0.0,
                       "publish_time": 0.0, **payload}).encode()


def test_proxy_keeps_seq_and_event_ids_continuous_across_a_move() -> None:
    context = zmq.Context.instance()
    proxy = SeqProxy("tcp://127.0.0.1:*", context=context)
    proxy.start()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"avbind/")
    sub.connect(proxy.bound[0])
    pubs = []
    try:
        for _ in range(2):
            pub = context.socket(zmq.PUB)
            pub.connect(proxy.frontend_bound)
            pubs.append(pub)
        time.sleep(0.5)  # subscriptions travel both hops
        old, new = pubs

        def send(pub, origin: bytes, kind: str, seq: int, **payload) -> None:
            pub.send_multipart([f"avbind/cam/{kind}".encode(), _worker_message("cam", kind, seq, **payload), origin])

        send(old, b"1:w0:10", "segment", 0, end=1.0)
        send(old, b"1:w0:10", "segment", 1, end=2.0)
        send(old, b"1:w0:10", "segment", 3, end=4.0)  # seq 2 lost between worker and proxy: stays a gap
        send(old, b"1:w0:10", "event", 0, event="start", event_id=0, start=3.0, end=None)
        assert wait_for(lambda: proxy.position("cam") == 4.0, 5)
        assert proxy.close_open_event("cam", 4.5, "test")  # the dead worker's open event gets its end
        send(new, b"2:w1:11", "segment", 0, end=5.0)  # the stream resumed elsewhere: numbering from 0
        send(new, b"2:w1:11", "event", 0, event="start", event_id=0, start=5.0, end=None)
        send(old, b"1:w0:10", "segment", 4, end=5.0)  # the old worker, late: dropped, never interleaved
        got = []
        while len(got) < 7 and sub.poll(5000):
            _topic, body = sub.recv_multipart()
            got.append(json.loads(body))
    finally:
        for pub in pubs:
            pub.close()
        sub.close()
        proxy.close()
    segments = [m["seq"] for m in got if m["type"] == "segment"]
    events = [(m["seq"], m["event"], m["event_id"]) for m in got if m["type"] == "event"]
    assert segments == [0, 1, 3, 4], got
    assert events == [(0, "start", 0), (1, "end", 0), (2, "start", 1)], got
    assert proxy.stale == 1 and proxy.position("cam") == 5.0


# -- a stream resumed part-way (what a moved file stream does), no Ray ------------------------------


def test_a_file_resumed_part_way_continues_its_timeline_there(media: Media) -> None:
    from avbind_testing import messages_until_ended

    from avbind.realtime.sources.media_stream import MediaStreamSource

    resume = 12.0
    source = MediaStreamSource(media.files["a"], speed=0, start_s=resume)
    messages = messages_until_ended("resumed", [source], timeout_s=120)
    segments = [m["segment"] for m in messages if m["type"] == "segment"]
    assert segments == list(range(int(resume), len(media.truth["a"]))), segments
    with pytest.raises(ValueError, match="start_s"):
        MediaStreamSource(media.files["a"], start_s=float("nan"))


# -- the cluster -----------------------------------------------------------------------------------

SPEED = 4.0  # files and the synthetic stream play at 4x real time
CLIPS = 4  # avsynth clips per file: 40 one-second segments, so one disagreement is 2.5 points


@dataclass
class Media:
    files: dict[str, Path]
    truth: dict[str, np.ndarray]  # file name -> class index per one-second segment


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    from avbind.models.data.avsynth import SynthConfig, render_clip, write_mp4
    from avbind.realtime.sources.synthetic import BACKGROUND

    folder = tmp_path_factory.mktemp("cluster-media")
    config = SynthConfig(seed=2026, size=160)
    files, truth = {}, {}
    for k, name in enumerate(("a", "b")):
        frames, audio, labels = [], [], []
        for c in range(CLIPS):
            f, a, annotation = render_clip(config, 200 + k * CLIPS + c)
            frames.append(f)
            audio.append(a)
            for second in range(annotation.duration_s):
                inside = any(s <= second < e for s, e in annotation.events)
                labels.append(annotation.class_index if inside else BACKGROUND)
        path = folder / f"{name}.mp4"
        write_mp4(path, np.concatenate(frames), np.concatenate(audio), config.fps, config.sample_rate, config.crf,
                  config.preset)
        files[name], truth[name] = path, np.array(labels)
    return Media(files, truth)


class Collector(threading.Thread):
    """A real subscriber on the cluster's endpoint keeping (arrival, message) of everything."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.socket = zmq.Context.instance().socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"avbind/")
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.connect(endpoint)
        self.received: list[tuple[float, dict]] = []
        self.raw: list[tuple[bytes, bytes]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.socket.poll(100):
                topic, body = self.socket.recv_multipart()
                with self.lock:
                    self.received.append((time.monotonic(), json.loads(body)))
                    self.raw.append((topic, body))
        self.socket.close()

    def messages(self, stream: str | None = None, kind: str | None = None, after: float = -1.0) -> list[dict]:
        with self.lock:
            return [m for t, m in self.received
                    if t > after and (stream is None or m["stream"] == stream) and (kind is None or m["type"] == kind)]

    def timed(self, stream: str, kind: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, m) for t, m in self.received if m["stream"] == stream and m["type"] == kind]


@dataclass
class Server:
    process: subprocess.Popen
    control: str
    publish: str
    collector: Collector
    log: Path
    names: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([avbind_exe(), "streams", *args, "--control", self.control], capture_output=True,
                              text=True, timeout=90)
        if check:
            assert done.returncode == 0, (done.stdout, done.stderr, self.log.read_text()[-3000:])
        return done

    def table(self) -> dict:
        return json.loads(self.cli("list", "--json").stdout)


def name_on(worker: str, prefix: str) -> str:
    """A stream name that consistent hashing places first on ``worker`` of two (w0, w1)."""
    ring = Placement(capacity=100, workers=["w0", "w1"])
    return next(f"{prefix}{i}" for i in range(1000) if ring.candidates(f"{prefix}{i}")[0] == worker)


@pytest.fixture(scope="module")
def udp_sender(media: Media):
    port = free_port(udp=True)
    process = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1",
         "-i", str(media.files["b"]), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "5",
         "-c:a", "aac", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], stdin=subprocess.DEVNULL)
    yield f"udp://127.0.0.1:{port}"
    process.kill()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Server:
    pytest.importorskip("ray", reason="avbind serve needs Ray: pip install 'avbind[cluster]'")
    from avbind.realtime.cluster.control import ControlError, request

    log = tmp_path_factory.mktemp("cluster") / "serve.log"
    control, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    with log.open("w") as out:
        process = subprocess.Popen(
            [avbind_exe(), "serve", "--workers", "2", "--num-cpus", "2", "--control", control, "--publish", publish,
             "--speed", str(SPEED), "--publish-steps", "--audio-wait-s", "60", "--max-lag-s", "60"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def up() -> bool:
        try:
            request(control, {"cmd": "ping"}, timeout_s=1)
            return True
        except ControlError:
            return process.poll() is not None

    assert wait_for(up, 180, poll_s=0.5), log.read_text()
    assert process.poll() is None, log.read_text()
    collector = Collector(publish)
    collector.start()
    time.sleep(0.5)  # the subscription reaches the proxy before the first stream starts
    yield Server(process, control, publish, collector, log)
    collector.stopped.set()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _schema_validator():
    import jsonschema

    from avbind.realtime.publish.messages import schema

    return jsonschema.Draft202012Validator(schema())


def _check_seq(messages: list[dict]) -> None:
    by_key: dict[tuple[str, str], list[int]] = {}
    for m in messages:
        by_key.setdefault((m["stream"], m["type"]), []).append(m["seq"])
    for key, seqs in by_key.items():
        assert seqs == list(range(len(seqs))), f"{key}: seq {seqs[:50]}"


def _offline_accuracy(path: Path, truth: np.ndarray) -> float:
    """What ``avbind eval`` scores for the same file: the streaming evaluator, fresh state, one pass."""
    from avbind.models.config import ModelConfig
    from avbind.models.data.ave import AveVideo
    from avbind.models.data.steps import prepare_video
    from avbind.models.evaluation import run_stream, segment_predictions
    from avbind.models.weights import default_onnx
    from avbind.realtime.backends import create_backend
    from avbind.realtime.postprocess.stream_outputs import softmax

    backend = create_backend(default_onnx())
    config = ModelConfig.from_dict(backend.info.config)
    prepared = prepare_video(AveVideo(path.stem, "x", path, (), duration_s=len(truth)), truth.astype(np.int64), config)
    out = run_stream(backend, prepared, (1.0, 1.0))
    predicted = segment_predictions(softmax(out["event_logits"]), prepared.step_segments, len(truth))
    return float(np.mean(np.asarray(predicted) == truth))


def test_four_streams_on_two_workers_one_endpoint(server: Server, media: Media, udp_sender: str) -> None:
    names = server.names
    names.update(a=name_on("w0", "file-a"), b=name_on("w1", "file-b"), syn=name_on("w0", "syn"),
                 udp=name_on("w1", "udp"))
    server.cli("add", "--name", names["a"], "--video", str(media.files["a"]))
    server.cli("add", "--name", names["b"], "--video", str(media.files["b"]))
    server.cli("add", "--name", names["syn"], "--video", "synthetic")
    server.cli("add", "--name", names["udp"], "--video", udp_sender)
    table = server.table()
    placed = {s["name"]: s["worker"] for s in table["streams"]}
    assert placed == {names["a"]: "w0", names["syn"]: "w0", names["b"]: "w1", names["udp"]: "w1"}, table
    pids = {w["worker"]: w["pid"] for w in table["workers"]}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert {s["pid"] for s in table["streams"]} == set(pids.values())

    def ended(name: str) -> bool:
        return any(m["state"] == "ended" for m in server.collector.messages(name, "status"))

    assert wait_for(lambda: ended(names["a"]) and ended(names["b"]), 240, poll_s=0.5), server.log.read_text()[-3000:]
    assert wait_for(lambda: len(server.collector.messages(names["udp"], "segment")) >= 3, 60)
    assert server.collector.messages(names["syn"], "segment"), "the synthetic stream published no segment"

    messages = server.collector.messages()
    validator = _schema_validator()
    for m in messages:
        validator.validate(m)
    _check_seq(messages)
    for m in messages:
        if m["type"] == "status":
            assert m["worker"] == placed[m["stream"]], m  # heartbeats name their worker
    for key in ("a", "b"):
        segments = server.collector.messages(names[key], "segment")
        truth = media.truth[key]
        assert sorted(m["segment"] for m in segments) == list(range(len(truth)))
        live = float(np.mean([m["class_index"] == truth[m["segment"]] for m in segments]))
        offline = _offline_accuracy(media.files[key], truth)
        assert abs(live - offline) <= 0.03, f"{key}: live {live:.3f} vs eval {offline:.3f}"


def test_control_refuses_bad_commands_and_keeps_serving(server: Server, media: Media, tmp_path: Path) -> None:
    from avbind.realtime.cluster.control import ControlError, request

    names = server.names
    duplicate = server.cli("add", "--name", names["syn"], "--video", "synthetic", check=False)
    assert duplicate.returncode != 0 and "already exists" in duplicate.stderr, duplicate.stderr
    missing = server.cli("add", "--name", "ghost", "--video", str(tmp_path / "nope.mp4"), check=False)
    assert missing.returncode != 0 and "no such media file" in missing.stderr, missing.stderr
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    broken = server.cli("add", "--name", "ghost", "--video", str(garbage), check=False)
    assert broken.returncode != 0 and "cannot open" in broken.stderr, broken.stderr
    unknown = server.cli("remove", "--name", "ghost", check=False)
    assert unknown.returncode != 0 and "no stream named 'ghost'" in unknown.stderr
    with pytest.raises(ControlError, match="unknown command"):
        request(server.control, {"cmd": "explode"})
    with pytest.raises(ControlError, match=r"not JSON|JSON object"):
        request(server.control, ["add"])  # type: ignore[arg-type]
    assert "ghost" not in {s["name"] for s in server.table()["streams"]}

    # add and remove while the others run
    extra = name_on("w1", "extra")
    server.cli("add", "--name", extra, "--video", "synthetic")
    assert wait_for(lambda: server.collector.messages(extra, "step"), 60)
    server.cli("remove", "--name", extra)
    assert wait_for(lambda: any(m["state"] == "ended" for m in server.collector.messages(extra, "status")), 30)
    table = server.table()
    assert extra not in {s["name"] for s in table["streams"]}
    listed = {s["name"]: s for s in table["streams"]}
    for key in ("syn", "udp"):
        entry = listed[names[key]]
        assert entry["state"] in ("running", "degraded") and entry["steps"] > 0 and entry["pid"], entry
    assert {"worker", "pid", "streams", "load", "alive"} <= set(table["workers"][0])
    human = server.cli("list").stdout
    assert names["syn"] in human and "restarts" in human


def test_killed_worker_streams_resume_elsewhere_and_it_comes_back(server: Server, media: Media) -> None:
    names = server.names
    late = name_on("w0", "late")
    # The control: how long a new stream takes from `streams add` to its first published step here.
    asked = time.monotonic()
    server.cli("add", "--name", late, "--video", str(media.files["a"]))
    assert wait_for(lambda: server.collector.messages(late, "step"), 60)
    start_control = server.collector.timed(late, "step")[0][0] - asked
    assert wait_for(lambda: len(server.collector.messages(late, "segment")) >= 2, 60)
    table = server.table()
    victim = next(w for w in table["workers"] if w["worker"] == "w0")
    on_victim = {s["name"] for s in table["streams"] if s["worker"] == "w0" and s["state"] != "ended"}
    assert on_victim == {late, names["syn"]}, table
    udp_before = [t for t, _ in server.collector.timed(names["udp"], "step")]

    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()

    def resumed_steps(name: str) -> list[float]:
        moved = [t for t, m in server.collector.timed(name, "status")
                 if t > killed and m["worker"] == "w1" and m["state"] == "reconnecting"]
        return [t for t, _ in server.collector.timed(name, "step") if moved and t > moved[0]]

    assert wait_for(lambda: resumed_steps(late), 60), server.log.read_text()[-3000:]
    recovery = resumed_steps(late)[0] - killed
    assert recovery <= max(2.0, 1.5 * start_control), f"published again after {recovery:.2f} s " \
                                                       f"(a fresh stream took {start_control:.2f} s)"
    moved = [m for m in server.collector.messages(late, "status", after=killed) if m["state"] == "reconnecting"]
    assert f"pid {victim['pid']}" in moved[0]["message"] and "state reset" in moved[0]["message"], moved[0]
    assert wait_for(lambda: resumed_steps(names["syn"]), 60)

    # the other worker's stream never paused: its longest gap while the streams moved is no longer
    # than its longest gap of the same length of time before the kill (twice, for a busy machine)
    window = 5.0
    assert wait_for(lambda: time.monotonic() > killed + window, window + 1)
    udp_after = [t for t, _ in server.collector.timed(names["udp"], "step") if killed <= t <= killed + window]
    control_gaps = np.diff([t for t in udp_before if t >= killed - window])
    gaps = np.diff([killed, *udp_after])
    assert len(udp_after) > 10 and gaps.max() <= max(1.0, 2 * control_gaps.max()), (gaps.max(), control_gaps.max())

    # Ray restarts the actor; it rejoins the ring and takes back what hashes to it
    def back() -> bool:
        w0 = next(w for w in server.table()["workers"] if w["worker"] == "w0")
        return w0["alive"] and w0["pid"] != victim["pid"] and w0["restarts"] == 1

    assert wait_for(back, 120, poll_s=1.0), server.log.read_text()[-3000:]
    assert wait_for(lambda: any(m["worker"] == "w0" for m in server.collector.messages(names["syn"], "status",
                                                                                        after=killed)), 60)

    # the moved file resumed where its published timeline was: no segment twice, none skipped
    assert wait_for(lambda: any(m["state"] == "ended" for m in server.collector.messages(late, "status")), 120)
    segments = [m["segment"] for m in server.collector.messages(late, "segment")]
    assert segments == list(range(len(media.truth["a"]))), segments
    messages = server.collector.messages()
    validator = _schema_validator()
    for m in messages:
        validator.validate(m)
    _check_seq(messages)
    starts = {m["event_id"] for m in messages if m["type"] == "event" and m["event"] == "start"
              and m["stream"] == late}
    ends = {m["event_id"] for m in messages if m["type"] == "event" and m["event"] == "end" and m["stream"] == late}
    assert starts == ends, (starts, ends)  # every event has its end, the dead worker's open one too


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_stops_every_worker_and_leaves_no_process(server: Server) -> None:
    workers = {w["pid"] for w in server.table()["workers"]}
    tree = _descendants(server.process.pid)
    assert workers <= tree, (workers, tree)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=90) == 128 + signal.SIGTERM, server.log.read_text()[-3000:]
    assert wait_for(lambda: not any(_alive(p) for p in tree), 30), [p for p in tree if _alive(p)]
    statuses = server.collector.messages(kind="status")
    for name in (server.names["syn"], server.names["udp"]):
        assert any(m["stream"] == name and m["state"] == "ended" for m in statuses), name
