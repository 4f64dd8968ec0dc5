"""``avbind run`` as a supervisor sees it: exit status, errors under ``--quiet``, signals, odd paths.

Real subprocesses of the installed command on small ffmpeg-made clips. Timeouts are generous and
nothing asserts on timing: the machine may be loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from avbind_testing import avbind_exe, free_port

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of test pattern with a tone: what every stream here plays."""
    out = tmp_path_factory.mktemp("media") / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=128x128:rate=10",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "3",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    return subprocess.run([avbind_exe(), "run", "--publish", endpoint, *args],
                          capture_output=True, text=True, timeout=timeout)


def _summary(stderr: str, stream: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{stream}: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_every_source_failing_exits_nonzero_with_the_reason(tmp_path: Path) -> None:
    result = _run("--video", str(tmp_path / "nope.mp4"), "--video", str(tmp_path / "gone.mp4"), "--seconds", "30")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for name in ("stream0", "stream1"):
        assert "FAILED" in _summary(result.stderr, name) and "no such media file" in _summary(result.stderr, name)


def test_a_failing_first_stream_does_not_end_the_good_one(tmp_path: Path, clip: Path) -> None:
    # Without --quiet the terminal view runs; the bad stream ends at once, the good one must still play.
    result = _run("--video", str(tmp_path / "nope.mp4"), "--video", str(clip), "--speed", "0", "--seconds", "60")
    assert result.returncode == 1, result.stdout + result.stderr
    good = _summary(result.stderr, "stream1")
    assert good.startswith("stream1: ok, ") and int(good.split(", ")[1].split()[0]) > 0, good
    assert "FAILED" in _summary(result.stderr, "stream0")


def test_a_clean_run_exits_zero(clip: Path) -> None:
    result = _run("--video", str(clip), "--speed", "0", "--quiet", "--seconds", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _summary(result.stderr, "stream0").startswith("stream0: ok, ")


def test_quiet_still_prints_source_errors(tmp_path: Path, clip: Path) -> None:
    result = _run("--quiet", "--video", str(tmp_path / "nope.mp4"), "--video", str(clip), "--speed", "0",
                  "--seconds", "60")
    assert result.returncode == 1, result.stderr
    assert "[stream0] error:" in result.stderr and "no such media file" in result.stderr
    assert "[stream1]" not in result.stdout  # predictions stay hidden


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([avbind_exe(), "run", "--publish", endpoint, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, endpoint


def _wait_running(proc: subprocess.Popen, sub, timeout_s: float = 90) -> list[dict]:
    """Messages received until the stream reports running (by then the signal handlers are in place)."""
    messages: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if sub.poll(200):
            _, raw = sub.recv_multipart()
            messages.append(json.loads(raw))
            if messages[-1]["type"] == "status" and messages[-1]["state"] == "running":
                return messages
    proc.kill()
    raise AssertionError(f"no running status: {proc.communicate()}")


def _subscriber(endpoint: str):
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_shuts_down_cleanly(signum: int, code: int) -> None:
    pytest.importorskip("zmq")
    # A synthetic stream runs until stopped; one signal must end the run with `ended` and a summary.
    proc, endpoint = _start("--video", "synthetic", "--quiet")
    sub = _subscriber(endpoint)
    try:
        messages = _wait_running(proc, sub)
        proc.send_signal(signum)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            name = signal.Signals(signum).name
            raise AssertionError(f"one {name} did not end the run: {proc.communicate()}") from None
        while sub.poll(500):
            messages.append(json.loads(sub.recv_multipart()[1]))
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert _summary(stderr, "stream0").startswith("stream0: ok, ")
    assert any(m["type"] == "status" and m["state"] == "ended" for m in messages), messages[-3:]


@pytest.mark.parametrize("kind", ["FIFO", "directory"])
def test_a_fifo_or_directory_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "pipe"
    if kind == "FIFO":
        os.mkfifo(path)
    else:
        path.mkdir()
    try:
        result = _run("--video", str(path), "--seconds", "30", timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"avbind run blocked on a {kind}") from None
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"not a regular file: is a {kind}" in result.stderr, result.stderr
