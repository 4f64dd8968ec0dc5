"""``avbind live`` with a real (virtual) display: the window opens, shows why the camera failed, and ends.

Run under Xvfb. Before the fix, ``cv2.namedWindow`` spun forever once PyAV had been imported (both
wheels bundle X libraries under the same sonames), so every test here bounds its subprocess with a
timeout and turns a hang into an assertion instead of a stuck suite. Needs the Xvfb, xdotool and
ImageMagick (``import``) executables; skipped where they are missing.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TITLE = "avbind live"
WINDOW_WAIT_S = 60.0  # generous: the machine may be loaded
EXIT_WAIT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _avbind() -> str:
    script = Path(sys.executable).parent / "avbind"
    if script.exists():
        return str(script)
    found = shutil.which("avbind")
    if found is None:
        pytest.skip("the avbind console script is not installed")
    return found


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A private Xvfb display (a free number), its name as DISPLAY wants it."""
    for tool in ("Xvfb", "xdotool", "import"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt: xvfb, xdotool, imagemagick)")
    # -displayfd: Xvfb picks a free display itself and writes its number only once it accepts
    # connections; waiting for the socket file alone raced the first client ("could not connect").
    read_end, write_end = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x720x24",
                               "-nolisten", "tcp"], pass_fds=(write_end,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    number, deadline = b"", time.monotonic() + 30
    while not number.endswith(b"\n") and time.monotonic() < deadline and server.poll() is None:
        if select.select([read_end], [], [], 0.2)[0]:
            chunk = os.read(read_end, 16)
            if not chunk:
                break
            number += chunk
    os.close(read_end)
    if not number.strip().isdigit():
        server.kill()
        server.wait()
        pytest.skip("Xvfb did not report a display within 30 s")
    number = int(number)
    try:
        yield f":{number}"
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _env(display: str) -> dict[str, str]:
    env = dict(os.environ, DISPLAY=display)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def _wait_for_window(display: str, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + WINDOW_WAIT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        found = subprocess.run(["xdotool", "search", "--name", TITLE], env=_env(display), capture_output=True,
                               text=True, timeout=10)
        if found.returncode == 0 and found.stdout.strip():
            return True
        time.sleep(0.5)
    return False


def _screenshot(display: str, path: Path):
    import cv2

    subprocess.run(["import", "-window", "root", str(path)], env=_env(display), check=True, timeout=30,
                   capture_output=True)
    image = cv2.imread(str(path))
    assert image is not None, "the screenshot could not be read"
    return image


def _start_live(display: str, seconds: float) -> subprocess.Popen:
    command = [_avbind(), "live", "--seconds", str(seconds), "--camera", "99", "--no-mic",
               "--publish", f"tcp://127.0.0.1:{_free_port()}"]
    return subprocess.Popen(command, env=_env(display), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float) -> tuple[int | None, str, str]:
    """Wait for the process; a hang is killed and reported as return code None."""
    try:
        out, err = process.communicate(timeout=timeout)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err


def _drawn(image) -> dict[str, bool]:
    """What of the overlay a screenshot shows: its panel, light text, the failure reason in red."""
    import numpy as np

    panel_rows = np.all(image == 24, axis=2).sum(axis=1) > 300  # the panel is filled with (24, 24, 24)
    reddish = (image[..., 2] > 150) & (image[..., 0] < 150) & (image[..., 1] < 150)  # BGR (80, 80, 255)
    return {"panel": bool(panel_rows.sum() >= 50), "text": bool((image.max(axis=2) >= 180).sum() > 200),
            "reason": bool(reddish.sum() > 50)}


def test_live_window_shows_camera_failure_and_ends_by_itself(display: str, tmp_path: Path) -> None:
    process = _start_live(display, seconds=20)
    drawn = {"panel": False, "text": False, "reason": False}
    try:
        opened = _wait_for_window(display, process)
        # screenshots until the engine's report of the failed camera is drawn (a loaded machine
        # paints late), for as long as the window runs
        while opened and process.poll() is None and not all(drawn.values()):
            drawn = _drawn(_screenshot(display, tmp_path / "shot.png"))
            time.sleep(0.5)
    finally:
        code, _, err = _finish(process, EXIT_WAIT_S)
    assert opened, f"no '{TITLE}' window appeared within {WINDOW_WAIT_S:g} s; stderr:\n{err}"
    assert code is not None, f"avbind live did not end by itself within {EXIT_WAIT_S:g} s; stderr:\n{err}"
    assert code == 0, err
    assert "Traceback" not in err, err
    assert "webcam 99" in err and "cannot open" in err, f"stderr does not name the camera failure:\n{err}"
    assert "[ WARN" not in err, f"OpenCV's own log lines are not silenced:\n{err}"
    assert drawn["panel"], "the overlay's panel is not on the screen"
    assert drawn["text"], "no bright text pixels on the screen"
    assert drawn["reason"], "the camera failure reason is not drawn in the window"


def test_live_window_ends_on_sigint(display: str) -> None:
    process = _start_live(display, seconds=120)
    try:
        opened = _wait_for_window(display, process)
        if opened:
            process.send_signal(signal.SIGINT)
    finally:
        code, _, err = _finish(process, EXIT_WAIT_S)
    assert opened, f"no '{TITLE}' window appeared within {WINDOW_WAIT_S:g} s; stderr:\n{err}"
    assert code is not None, f"avbind live ignored SIGINT for {EXIT_WAIT_S:g} s; stderr:\n{err}"
    assert "Traceback" not in err, err


def test_window_opens_when_av_is_imported_first(display: str) -> None:
    """The import order that hung: PyAV, then OpenCV's window through the overlay's code path."""
    code = (
        "import av, cv2, time\n"
        "import numpy as np\n"
        "from avbind.realtime.views.overlay import WindowProcess, display_available\n"
        "assert display_available(), 'display_available() said no'\n"
        "w = WindowProcess('avbind live')\n"
        "for _ in range(20):\n"
        "    w.show(np.full((240, 320, 3), 24, np.uint8)); time.sleep(0.05)\n"
        "assert not w.closed\n"
        "w.close()\n"
        "print('ok')\n"
    )
    with tempfile.TemporaryDirectory() as cwd:
        try:
            done = subprocess.run([sys.executable, "-c", code], env=_env(display), capture_output=True, text=True,
                                  timeout=EXIT_WAIT_S, cwd=cwd)
        except subprocess.TimeoutExpired as err:
            pytest.fail(f"the window path hung with av imported first: {err.stderr!r}")
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr
