"""The browser dashboard and the preview pictures (issue 18).

Unit level: previews are schema-valid three-frame messages whose JPEG decodes at the advertised
size, paced to --preview-fps; the dashboard's state survives duplicates, restarts and ended
streams; a non-loopback --http is refused without --http-public.

End to end: a real two-stream engine with --preview-fps and --snapshot, ``avbind dashboard`` as a
subprocess, /state over HTTP, then the page in Debian's headless Chromium driven by Selenium (each
stream's name, a class label that changes while the streams play, a preview picture that loaded),
and last the engine stopped and started again with one stream kept and one new.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
from avbind_testing import avbind_exe, free_port, wait_for

from avbind.realtime.publish.messages import schema
from avbind.realtime.publish.preview import Previews, encode_preview
from avbind.realtime.publish.publisher import Publisher
from avbind.realtime.publish.subscriber import Subscriber, format_message
from avbind.realtime.views.dashboard import DashboardState, is_loopback_host, parse_http

VALIDATOR = jsonschema.Draft202012Validator(schema())
DEADLINE_S = 60.0  # generous: the machine is slow and shared; nothing below waits longer than it must


# Previews ----------------------------------------------------------------------------------
def _status() -> dict:
    return {"state": "running", "level": "info", "message": "", "backend": "test", "fps": 25.0, "steps": 1,
            "steps_per_s": 5.0, "latency_ms": {"p50": 4.0, "p99": 6.0}, "sources": ["x"],
            "drops": {"steps_skipped": 0, "frames_evicted": 0, "audio_overflows": 0, "audio_overwritten": 0,
                      "audio_underruns": 0, "degraded_steps": 0, "resets": 0}}


def test_a_preview_is_a_schema_valid_three_frame_message_whose_jpeg_decodes() -> None:
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[100:300, 200:500] = (255, 0, 0)  # a red block, to see the colour order survive
    publisher = Publisher("tcp://127.0.0.1:*")
    pictures = Subscriber(publisher.bound[0], types=("status", "preview"))
    plain = Subscriber(publisher.bound[0])  # the default types: previews arrive but are not wanted
    try:
        for _ in range(200):  # ZeroMQ's slow joiner: until both hear a status
            publisher.publish("cam", "status", _status(), time.monotonic())
            if pictures.receive(0.02) is not None and plain.receive(0.02) is not None:
                break
        while pictures.receive(0.05) is not None or plain.receive(0.05) is not None:
            pass
        jpeg, width, height = encode_preview(rgb)
        sent = publisher.publish_preview("cam", jpeg, width, height, 12.5, time.monotonic())
        publisher.publish("cam", "status", _status(), time.monotonic())
        got = pictures.receive(5.0)
        after = plain.receive(5.0)
        with pytest.raises(ValueError, match="publish_preview"):
            publisher.publish("cam", "preview", {}, time.monotonic())
    finally:
        pictures.close()
        plain.close()
        publisher.close()
    assert got is not None and got.topic == "avbind/cam/preview" and got.message == sent
    VALIDATOR.validate(got.message)
    assert (got.message["width"], got.message["height"], got.message["format"]) == (320, 240, "jpeg")
    assert got.message["bytes"] == len(got.data) == len(jpeg) and got.message["time"] == 12.5
    image = cv2.imdecode(np.frombuffer(got.data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3)
    assert image[100, 160, 2] > 200 and image[100, 160, 0] < 60  # BGR: still red
    # the default subscriber skipped the preview as unwanted, not as malformed
    assert after is not None and after.message["type"] == "status" and plain.malformed == 0
    assert "KB" in format_message(got.message) and "320x240" in format_message(got.message)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**got.message, "format": "png"})


def test_previews_are_paced_and_only_of_new_frames() -> None:
    class Frame:
        def __init__(self, t: float) -> None:
            self.rgb, self.time, self.capture = np.zeros((90, 160, 3), np.uint8), t, t

    class Frames:
        def __init__(self) -> None:
            self.t = 0.0

        def peek_at(self, t: float) -> Frame:
            return Frame(self.t)

    class Stream:
        name = "cam"

        def __init__(self) -> None:
            self.aligner = type("Aligner", (), {"frames": Frames()})()

    class Sink:
        def __init__(self) -> None:
            self.sent: list[tuple] = []

        def publish_preview(self, *args: object) -> None:
            self.sent.append(args)

    sink, stream = Sink(), Stream()
    previews = Previews(sink, fps=2)
    for k in range(17):  # 2 s in ticks of 1/8 s, a new frame every tick
        stream.aligner.frames.t = k / 8
        previews.publish_due([stream], k / 8)
    assert [args[4] for args in sink.sent] == [0.0, 0.5, 1.0, 1.5, 2.0]  # at most 2 per second
    assert sink.sent[0][2:4] == (160, 90)  # a small frame is not scaled up
    previews.publish_due([stream], 10.0)  # the same frame again: nothing new to show
    assert len(sink.sent) == 5


# Dashboard state ---------------------------------------------------------------------------
def _message(kind: str, seq: int, sent: float, stream: str = "cam", **payload: object) -> dict:
    return {"schema_version": 1, "type": kind, "stream": stream, "seq": seq, "capture_time": sent,
            "publish_time": sent, **payload}


def test_dashboard_state_handles_duplicates_restarts_endings_and_snapshots() -> None:
    state = DashboardState(forget_s=30)
    assert state.apply(_message("status", 0, 100.0, state="starting"), now=100.0) == "applied"
    segment = _message("segment", 0, 101.0, label="Grow green triangle", start=0.0, end=1.0,
                       top=[{"label": "Grow green triangle", "score": 0.9}])
    assert state.apply(segment, now=101.0) == "applied"
    assert state.apply(segment, now=101.1) == "duplicate"  # the copy a late join delivers
    state.apply(_message("event", 0, 101.5, event="start", event_id=0, label="Grow", class_index=4, start=0.2,
                         end=None), now=101.5)
    state.apply(_message("status", 3, 102.0, state="running"), now=102.0)  # seq 1 and 2 lost
    shown = state.describe(now=102.0)["streams"][0]
    assert shown["segment"]["label"] == "Grow green triangle" and shown["lost"] == 2
    assert shown["events"][0]["t1"] is None and shown["events"][0]["t0"] == pytest.approx(100.2)
    # the engine restarted: seq from 0 again, sent later; the old run's picture is dropped
    assert state.apply(_message("status", 0, 150.0, state="starting"), now=150.0) == "restart"
    shown = state.describe(now=150.0)["streams"][0]
    assert shown["restarts"] == 1 and shown["segment"] is None and shown["events"] == []
    assert shown["state"] == "starting"
    # a new stream appears; then it ends and is forgotten after forget_s
    state.apply(_message("status", 0, 151.0, stream="door", state="running"), now=151.0)
    state.apply(_message("status", 1, 152.0, stream="door", state="ended"), now=152.0)
    assert [s["state"] for s in state.describe(now=153.0)["streams"]] == ["starting", "ended"]
    assert state.describe(now=160.0)["streams"][0]["state"] == "silent"  # cam said nothing for 10 s
    state.apply(_message("status", 1, 165.0, state="running"), now=165.0)
    state.expire(now=183.0)  # door ended 31 s ago
    assert [s["name"] for s in state.describe(now=183.0)["streams"]] == ["cam"]
    state.expire(now=196.0)  # cam silent for 31 s
    assert state.describe(now=196.0)["streams"] == []
    # a snapshot fills in a late joiner, and the live copies it covers are duplicates
    snapshot = {"time": 200.0, "model": {"model": "avbind-s"}, "streams": {"yard": {
        "status": _message("status", 4, 199.0, stream="yard", state="running"),
        "segment": _message("segment", 7, 199.5, stream="yard", label="background", start=7.0, end=8.0, top=[]),
        "open_events": [], "seq": {"status": 4, "segment": 7, "event": 2}}}}
    state.apply_snapshot(snapshot, now=200.0)
    assert state.describe(now=200.0)["streams"][0]["segment"]["label"] == "background"
    assert state.apply(_message("segment", 7, 199.5, stream="yard"), now=200.1) == "duplicate"
    assert state.apply(_message("segment", 8, 200.5, stream="yard", label="x", start=8.0, end=9.0, top=[]),
                       now=200.5) == "applied"
    assert state.describe(now=200.5)["streams"][0]["lost"] == 0


def test_http_address_must_be_loopback_unless_public_is_explicit() -> None:
    assert parse_http("127.0.0.1:8080") == ("127.0.0.1", 8080) and parse_http("[::1]:0") == ("::1", 0)
    assert is_loopback_host("localhost") and is_loopback_host("127.0.0.2") and is_loopback_host("::1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("example.org")
    with pytest.raises(ValueError):
        parse_http("8080")
    refused = subprocess.run([avbind_exe(), "dashboard", "--http", "0.0.0.0:0", "--seconds", "5"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--http-public" in refused.stderr, refused.stderr


_NO_AIOHTTP = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp" or name.startswith("aiohttp."):
            raise ImportError("aiohttp is blocked in this test")
sys.meta_path.insert(0, Block())
from avbind.realtime.cli import cli
cli(["dashboard", "--seconds", "1"])
"""


def test_without_aiohttp_the_dashboard_says_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-c", _NO_AIOHTTP], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "pip install 'avbind[dashboard]'" in result.stderr, result.stderr


# End to end --------------------------------------------------------------------------------
def _engine(publish: str, snapshot: str, streams: list[tuple[str, str]], log: Path) -> subprocess.Popen:
    videos = [arg for name, video in streams for arg in ("--video", video, "--name", name)]
    return subprocess.Popen(
        [avbind_exe(), "run", *videos, "--speed", "2", "--seconds", "90", "--quiet", "--preview-fps", "2",
         "--publish", publish, "--snapshot", snapshot],
        stdout=subprocess.DEVNULL, stderr=log.open("a"))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def _state(base: str) -> dict:
    try:
        return json.loads(_get(base + "state"))
    except (urllib.error.URLError, ConnectionError, ValueError):
        return {}


def _streams(base: str) -> dict[str, dict]:
    return {s["name"]: s for s in _state(base).get("streams", [])}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    """A two-stream engine with previews and snapshots, and a dashboard watching it."""
    tmp = tmp_path_factory.mktemp("dashboard")
    publish, snapshot = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    procs = {"engine": _engine(publish, snapshot, [("cam", "synthetic"), ("door", "synthetic:7")], tmp / "engine.log")}
    procs["dashboard"] = subprocess.Popen(
        [avbind_exe(), "dashboard", "--connect", publish, "--snapshot", snapshot, "--http", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp / "dashboard.log").open("w"))
    info = {"base": f"http://127.0.0.1:{port}/", "publish": publish, "snapshot": snapshot, "procs": procs,
            "tmp": tmp}
    try:
        yield info
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _logs(info: dict) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(info["tmp"].glob("*.log")))


def test_state_shows_every_stream_with_labels_and_previews(running: dict) -> None:
    base = running["base"]
    ready = wait_for(lambda: all(s["segment"] and s["preview"] and s["latency_ms"]["p50"] is not None
                                 for s in _streams(base).values()) and set(_streams(base)) == {"cam", "door"},
                     DEADLINE_S, poll_s=0.3)
    assert ready, (_state(base), _logs(running))
    state = _state(base)
    classes = set(state["model"]["classes"])
    assert state["engine"]["connected"] and state["counters"]["snapshots"] >= 1
    for stream in state["streams"]:
        assert stream["state"] in ("running", "degraded"), stream
        assert stream["segment"]["label"] in classes and stream["segment"]["top"]
        assert stream["latency_ms"]["p50"] > 0 and stream["steps_per_s"] > 0
        jpeg = _get(base + f"preview/{stream['name']}.jpg")
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[:2] == (stream["preview"]["height"], stream["preview"]["width"])
    # avbind listen, asked for previews, prints each one's size (and never chokes on the third frame)
    listen = subprocess.run([avbind_exe(), "listen", running["publish"], "--stream", "cam", "--topic", "preview",
                             "--count", "1", "--seconds", "30"], capture_output=True, text=True, timeout=60)
    assert listen.returncode == 0 and "[cam] preview " in listen.stdout and " KB " in listen.stdout, listen
    with pytest.raises(urllib.error.HTTPError) as err:  # DNS rebinding: a Host that is not loopback
        urllib.request.urlopen(urllib.request.Request(base + "state", headers={"Host": "evil.example:80"}),
                               timeout=10)
    assert err.value.code == 421


def _chromium() -> tuple[str, str] | None:
    browser = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)
    driver = next((p for p in (shutil.which("chromedriver"), "/usr/lib/chromium/chromedriver")
                   if p and os.path.exists(p)), None)
    return (browser, driver) if browser and driver else None


_PAGE = """
const out = {};
for (const card of document.querySelectorAll("section.card")) {
  const img = card.querySelector("img.preview");
  out[card.querySelector(".stream-name").textContent] = {
    label: card.querySelector(".segment-label").textContent,
    state: card.querySelector(".state").textContent,
    picture: img && !img.hidden && img.complete ? img.naturalWidth : 0,
  };
}
return out;
"""


def test_page_in_headless_chromium_shows_names_changing_labels_and_pictures(running: dict) -> None:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    found = _chromium()
    if found is None:
        pytest.skip("Chromium or chromedriver is absent (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,760", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(running["base"])
        page: dict = {}

        def shows_both() -> bool:
            page.update(driver.execute_script(_PAGE))
            return {"cam", "door"} <= set(page) and all(page[n]["label"] != "no segment yet" for n in ("cam", "door"))

        assert wait_for(shows_both, DEADLINE_S, poll_s=0.2), (page, _logs(running))
        first = dict(page["cam"])
        # the label follows the stream: read it until it differs (clips change class every few seconds)
        assert wait_for(lambda: shows_both() and page["cam"]["label"] != first["label"], DEADLINE_S, poll_s=0.2), \
            (first, page)
        assert wait_for(lambda: shows_both() and all(page[n]["picture"] > 0 for n in ("cam", "door")), DEADLINE_S,
                        poll_s=0.2), page
        # the WebSocket, not the polling fallback
        assert wait_for(lambda: driver.find_element("id", "link").text == "dashboard: live", 10), \
            driver.find_element("id", "link").text
        shot = running["tmp"] / "dashboard.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("AVBIND_DASHBOARD_SCREENSHOT"):  # how docs/dashboard.png was made
            shutil.copy(shot, os.environ["AVBIND_DASHBOARD_SCREENSHOT"])
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_dashboard_survives_the_engine_restarting_with_streams_ending_and_appearing(running: dict) -> None:
    base, procs = running["base"], running["procs"]
    assert wait_for(lambda: "cam" in _streams(base), DEADLINE_S, poll_s=0.3), _logs(running)
    procs["engine"].terminate()  # SIGTERM: a clean stop that publishes each stream's "ended"
    procs["engine"].wait(timeout=30)
    assert wait_for(lambda: {s["state"] for s in _streams(base).values()} == {"ended"}, 20, poll_s=0.3), \
        _streams(base)
    # the same endpoints again: "cam" comes back (its seq starts at 0 again), "yard" is new, "door" is gone
    procs["engine"] = _engine(running["publish"], running["snapshot"], [("cam", "synthetic"), ("yard", "synthetic:3")],
                              running["tmp"] / "engine.log")

    def back() -> bool:
        streams = _streams(base)
        return (set(streams) == {"cam", "door", "yard"} and streams["door"]["state"] == "ended"
                and all(streams[n]["state"] in ("running", "degraded") and streams[n]["segment"]
                        for n in ("cam", "yard")))

    assert wait_for(back, DEADLINE_S, poll_s=0.3), (_streams(base), _logs(running))
    cam = _streams(base)["cam"]
    assert cam["restarts"] == 1 and cam["lost"] == 0
    assert procs["dashboard"].poll() is None, _logs(running)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
