"""Teach mode (issue 19): record takes, train on them, recognise new ones.

Training uses takes generated offline by tests/teach_scenes.py (three photographs, each with its
own spoken word, over noise; background takes). The device-path test then records held-out
takes (other sizes, positions, voice and noise) through the real capture paths: a video file
played as the camera through ``cv2.VideoCapture`` at its frame rate, and its sound played with
``paplay`` into a PulseAudio null sink whose monitor is the microphone (sounddevice/PortAudio);
the trained ONNX model must recognise them. Kept short for the suite (3 s takes, 100 training
steps); tools/teach_accuracy.py measures the README's figures with 10 s takes.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import teach_scenes as scenes
from avbind_testing import avbind_exe

from avbind.models.data.dataset import detect_format, open_dataset
from avbind.models.data.folder import MANIFEST, split_of
from avbind.realtime.teach import PlannedTake, Screen, plan_takes, record

pytestmark = pytest.mark.skipif(not scenes.espeak_available(), reason="needs espeak-ng for the scenes' words "
                                                                      "(apt: espeak-ng)")

TRAIN_TAKES, TRAIN_S = 3, 3.0  # per class (and background), offline
HELD_S, COUNTDOWN_S, MARGIN_S = 3.0, 1.0, 1.5  # recorded through the devices


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model taught on offline takes: the folder, the ONNX file, the report, the seconds it took."""
    from avbind.models.config import TeachConfig
    from avbind.models.teach import teach

    root = tmp_path_factory.mktemp("teach")
    folder = scenes.write_folder(root / "takes", TRAIN_TAKES, TRAIN_S, "train", seed=0)
    started = time.perf_counter()
    report = teach(folder, root / "model.onnx", TeachConfig(steps=100, threads=2))
    return {"folder": folder, "model": root / "model.onnx", "report": report,
            "seconds": time.perf_counter() - started}


def test_a_folder_of_takes_is_a_data_set_with_held_out_takes(taught: dict) -> None:
    from avbind.models.data.check import check_dataset

    folder = taught["folder"]
    assert detect_format(folder) == "folder"
    checked = check_dataset(folder)  # avbind data check
    assert not checked.errors and checked.splits["val"].classes == {c: 1 for c in (*scenes.CLASSES, "background")}
    everything, train, val = (open_dataset(folder, split) for split in (None, "train", "val"))
    assert everything.class_names == scenes.CLASSES  # sorted folder names: no teach.json here
    assert len(everything.clips()) == 4 * TRAIN_TAKES
    assert {t.clip_id for t in train.takes} | {t.clip_id for t in val.takes} == {t.clip_id for t in everything.takes}
    assert not {t.clip_id for t in train.takes} & {t.clip_id for t in val.takes}
    for category in (*scenes.CLASSES, "background"):  # one of each class's three takes held out
        assert len(val.takes_of(category)) == 1 and len(train.takes_of(category)) == 2
    take = everything.takes_of("coffee")[0]
    targets = everything.targets(everything.clips()[[c.clip_id for c in everything.clips()].index(take.clip_id)],
                                 np.arange(20) / 5.0)
    assert (targets.labels == 1).all() and list(targets.segment_labels) == [1] * 4  # 20 steps: 4 s
    background = everything.clips()[-1]
    assert (everything.targets(background, np.arange(5) / 5.0).labels == 3).all()
    # Adding a take moves no other take between the splits (held out by a hash of the name).
    more = [*everything.takes, type(take)("coffee/take-009.mp4", "coffee", take.path)]
    before, after = split_of(list(everything.takes)), split_of(more)
    assert sum(before[k] != after[k] for k in before) <= 1


def test_teach_train_exports_the_users_classes_and_validates_per_class(taught: dict) -> None:
    from avbind.realtime.backends.model_file import read_model_info

    info = read_model_info(taught["model"])
    assert info.class_names == scenes.CLASSES and info.event_names[-1] == "background"
    assert info.name == "avbind-lite0" and info.input_size == 128  # swappable with the shipped avbind-s
    report = taught["report"]
    assert report.audio_init == "shipped" and report.takes["cat"] == {"train": 2, "val": 1}
    fusion = report.validation["shipped"]["fusion"]
    assert set(fusion["per_class"]) == {*scenes.CLASSES, "background"}
    assert fusion["segment_accuracy"] >= 0.75, report.validation
    saved = json.loads(taught["model"].with_suffix(".json").read_text())
    assert saved["classes"] == list(scenes.CLASSES) and saved["seconds"]["total"] > 0
    assert taught["model"].with_suffix(".pt").is_file()
    print(f"teach train: {taught['seconds']:.1f} s for 4 x {TRAIN_TAKES} takes of {TRAIN_S:g} s "
          f"({report.seconds})")


def test_too_little_data_is_refused_saying_what_to_record(tmp_path: Path) -> None:
    from avbind.models.teach import TooLittleDataError, teach

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / MANIFEST).write_text(json.dumps({"classes": ["knock", "kettle"], "takes": []}))
    result = subprocess.run([avbind_exe(), "teach", "train", str(tmp_path / "empty"), "--out",
                             str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no takes of knock, kettle" in result.stderr and "avbind teach record" in result.stderr
    short = tmp_path / "short"
    scenes.write_take(short / "cat" / "take-001.mp4", scenes.Take("cat", 1, 1.2))
    scenes.write_take(short / "background" / "take-001.mp4", scenes.Take("background", 2, 3.0))
    with pytest.raises(TooLittleDataError, match=r"take-001.mp4: 1.2 s of media; a take must be at least 2 s"):
        teach(short, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class ScriptedScreen:
    """A view whose keys are scripted: (phase, category, number) -> the keys pressed then, once."""

    def __init__(self, script: dict[tuple[str, str, int], str]) -> None:
        self.script, self.seen = dict(script), []
        self._now: tuple[str, str, int] | None = None

    def show(self, screen: Screen) -> None:
        self._now = (screen.phase, screen.take.category, screen.take.number)
        if not self.seen or self.seen[-1] != self._now:
            self.seen.append(self._now)

    def say(self, text: str) -> None:
        pass

    def pressed(self) -> list[str]:
        key = self.script.pop(self._now, "")
        if key == "^C":
            raise KeyboardInterrupt
        return list(key)

    def close(self) -> None:
        pass


def test_redo_skip_and_ctrl_c_keep_only_finished_takes(tmp_path: Path) -> None:
    from avbind.realtime.sources.synthetic import SyntheticSource

    assert plan_takes(["a"], 3, 1) == [PlannedTake("a", 1, 3), PlannedTake("background", 1, 1),
                                       PlannedTake("a", 2, 3), PlannedTake("a", 3, 3)]
    script = {("recording", "background", 1): "r", ("countdown", "a", 2): "s", ("recording", "a", 3): "^C"}
    screen = ScriptedScreen(script)
    kept = record(tmp_path, [SyntheticSource(seed=3)], ["a"], seconds=0.6, takes=3, background_takes=1,
                  countdown_s=0.2, screen=lambda capture: screen)
    assert [e["file"] for e in kept] == ["a/take-001.mp4", "background/take-001.mp4"]
    assert not screen.script, f"keys not pressed: {screen.script}"
    assert screen.seen.count(("recording", "background", 1)) == 2  # redone
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [t["file"] for t in manifest["takes"]] == [e["file"] for e in kept] and manifest["classes"] == ["a"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.mp4*")) == [
        "a/take-001.mp4", "background/take-001.mp4"]  # the interrupted take left nothing behind
    with av.open(str(tmp_path / "a" / "take-001.mp4")) as media:
        assert media.streams.video[0].codec_context.name == "h264"
        assert media.streams.audio[0].codec_context.name == "aac" and media.streams.audio[0].rate == 16_000


def test_teach_record_in_the_terminal_writes_takes_another_session_adds_to(tmp_path: Path) -> None:
    """The command line, without a display: a media file as the camera (its own sound as the microphone)."""
    scene = scenes.write_take(tmp_path / "scene.mp4", scenes.Take("cat", 4, 6.0))
    folder = tmp_path / "takes"
    for session in (1, 2):
        result = subprocess.run([avbind_exe(), "teach", "record", str(folder), "--video", str(scene), "--audio",
                                 "none", "--classes", "cat", "--takes", "1", "--background-takes", "0", "--seconds",
                                 "1", "--countdown", "0.3", "--window", "off"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "REC cat, take 1 of 1" in result.stdout and f"kept cat/take-00{session}.mp4" in result.stdout
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [t["file"] for t in manifest["takes"]] == ["cat/take-001.mp4", "cat/take-002.mp4"]
    assert all(t["camera_frames"] > 0 and t["audio_coverage"] > 0.8 for t in manifest["takes"])


def _session(tmp_path: Path, plan: list[PlannedTake]) -> tuple[Path, list[Path], float]:
    """The camera's file (every take's scene, one after the other) and each take's sound."""
    length = COUNTDOWN_S + HELD_S + MARGIN_S
    frames, wavs = [], []
    for k, take in enumerate(plan):
        video, audio = scenes.render(scenes.Take(take.category, 500 + k, length, "heldout"))
        frames.append(video)
        wavs.append(scenes.write_wav(tmp_path / f"scene-{k}.wav", audio))
    camera = tmp_path / "camera.mp4"
    from avbind.models.data.avsynth import write_mp4

    write_mp4(camera, np.concatenate(frames), np.zeros(round(len(plan) * length * scenes.RATE), np.float32),
              scenes.FPS, scenes.RATE)
    return camera, wavs, length


def test_recognises_takes_recorded_through_the_camera_and_microphone(taught: dict, pulse_server: str,
                                                                     tmp_path: Path) -> None:
    from avbind.models.evaluation import evaluate_model_file
    from avbind.realtime.sources.microphone import MicrophoneSource
    from avbind.realtime.sources.webcam import WebcamSource

    plan = plan_takes(list(scenes.CLASSES), 1, 1)
    camera_file, wavs, length = _session(tmp_path, plan)
    camera = WebcamSource(str(camera_file), realtime=True)
    players: list[subprocess.Popen] = []

    def before_take(take: PlannedTake) -> None:
        """Hold each countdown until the camera's file reaches that take's scene, then play its sound."""
        k = len(players)
        due = camera.started_at + k * length
        time.sleep(max(0.0, due - time.monotonic()))
        players.append(subprocess.Popen(["paplay", str(wavs[k])]))

    folder = tmp_path / "recorded"
    try:
        kept = record(folder, [camera, MicrophoneSource(pulse_server)], list(scenes.CLASSES), seconds=HELD_S,
                      takes=1, countdown_s=COUNTDOWN_S, before_take=before_take)
    finally:
        for player in players:
            player.wait(timeout=30)
    assert [e["class"] for e in kept] == [t.category for t in plan]
    assert all(e["camera_frames"] >= HELD_S * scenes.FPS * 0.8 for e in kept), kept  # paced, not a burst
    assert all(e["audio_coverage"] > 0.9 for e in kept), kept
    report = evaluate_model_file(taught["model"], folder, None, progress=False)
    accuracy = {name: entry["streaming"]["segment_accuracy"] for name, entry in report["ablations"].items()}
    print(f"held-out takes through the devices: {accuracy}; per class (fusion): "
          f"{report['ablations']['fusion']['streaming']['per_class_accuracy']}")
    assert accuracy["fusion"] >= 0.75, report["ablations"]["fusion"]
    assert accuracy["video only"] >= 0.5 and accuracy["audio only"] >= 0.5, accuracy  # chance: 0.25


def test_live_teach_trains_beside_the_running_engine_and_swaps_the_model_in(taught: dict, tmp_path: Path) -> None:
    """``avbind live --teach`` with the takes already there (--teach-takes 0): the live stream runs on
    the shipped model while teach train runs beside it, then the taught model is swapped in and the
    stream's segments carry the user's classes (the camera, a test pattern, shows none of them).
    Recording itself is the tests above."""
    camera = tmp_path / "camera.mp4"  # a file played as the camera, at its frame rate, long enough
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=10", "-t", "240", "-pix_fmt", "yuv420p", str(camera)], check=True)
    log = tmp_path / "live.log"
    # a segment line whose classes are the taught ones (the camera shows none of them: background
    # on top, the taught classes next)
    taught_segment = re.compile(rf"^\[live\]\s+[\d.]+-[\d.]+\s.*next: .*\b({'|'.join(scenes.CLASSES)})\b")
    out_lines: list[str] = []  # the terminal view's lines, read as they come so its pipe never fills
    with open(log, "w") as err:
        live = subprocess.Popen([avbind_exe(), "live", "--teach", "--teach-dir", str(taught["folder"]),
                                 "--teach-takes", "0", "--teach-steps", "40", "--camera", str(camera), "--no-mic",
                                 "--no-window", "--seconds", "230", "--publish", "tcp://127.0.0.1:*", "--threads", "1"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        def read() -> None:
            for line in live.stdout:
                out_lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 220
            while (time.monotonic() < deadline and live.poll() is None
                   and not any(taught_segment.match(line) for line in list(out_lines))):
                time.sleep(0.5)
        finally:
            live.send_signal(2)
            try:
                live.wait(30)
            except subprocess.TimeoutExpired:
                live.kill()
                live.wait()
            reader.join(5)
    text = log.read_text()
    assert "now running" in text, text[-3000:]
    assert (taught["folder"] / "model.onnx").is_file()
    assert any(taught_segment.match(line) for line in out_lines), "".join(out_lines[-30:])
    assert any("model swapped" in line for line in out_lines), "".join(out_lines[-30:])
