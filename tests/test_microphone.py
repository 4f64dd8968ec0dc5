"""MicrophoneSource on a real PortAudio stream: a PulseAudio null sink's monitor as the microphone.

A tone played into the sink with ``paplay`` must come out of the source at the model's rate, at
its pitch, on a continuous timeline. Set-up as in /work/shared/RECIPES.md; CI installs
``pulseaudio pulseaudio-utils`` (the null sink needs no sound hardware). The daemon is the
``pulse_server`` fixture of conftest.py, shared with tests/test_teach.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from avbind_testing import avbind_exe, wait_for

from avbind.realtime.sources.base import CollectingSink
from avbind.realtime.sources.microphone import MicrophoneSource

MODEL_RATE = 16_000  # Hz
SINK_RATE = 48_000  # Hz, the null sink's rate
TONE_HZ = 1000.0
TONE_S = 0.8



def _tone_wav(path: Path) -> Path:
    samples = 0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(round(SINK_RATE * TONE_S)) / SINK_RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SINK_RATE)
        out.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize("device_rate", [None, SINK_RATE], ids=["default-rate", "48k"])
def test_microphone_hears_a_tone_played_into_the_sink(pulse_server: str, tmp_path: Path, device_rate) -> None:
    source = MicrophoneSource(pulse_server, sample_rate=MODEL_RATE, device_rate=device_rate)
    assert source.has_audio and not source.has_video
    sink = CollectingSink()
    origin = time.monotonic()
    source.start(sink, origin)
    try:
        assert wait_for(lambda: sink.audio, 10.0), f"no audio from {pulse_server}: {sink.statuses}"
        played_at = time.monotonic() - origin
        subprocess.run(["paplay", str(_tone_wav(tmp_path / "tone.wav"))], check=True, timeout=20)
        finished_at = time.monotonic() - origin
        time.sleep(0.3)  # the tail through the loop-back
    finally:
        began = time.monotonic()
        source.stop()
        assert time.monotonic() - began < 1.0
    assert source.device_rate == (device_rate or source.device_rate) and source.device_rate > 0
    assert not [s for s in sink.statuses if s.level == "error"], sink.statuses

    chunks = list(sink.audio)
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    times = np.array([c.time for c in chunks])
    ends = times[:-1] + np.array([len(c.samples) for c in chunks[:-1]]) / MODEL_RATE
    if not any(s.discontinuity for s in sink.statuses):
        np.testing.assert_allclose(times[1:], ends, rtol=0, atol=1e-9)  # one continuous timeline
    # Arrival after the first sample's time, up to the jitter of the one block that anchored the timeline.
    lag = np.array([c.capture - origin - c.time for c in chunks])
    assert np.all(lag > -0.05) and np.median(lag) < 0.5
    audio = np.concatenate([c.samples for c in chunks])
    assert source.counters.audio_samples == len(audio)

    loud = np.flatnonzero(np.abs(audio) > 0.25)
    assert len(loud) > 0.5 * TONE_S * MODEL_RATE, "the tone did not come through"
    onset = times[0] + loud[0] / MODEL_RATE
    assert played_at - 0.1 < onset < finished_at + 0.5  # on the shared monotonic timeline
    segment = audio[loud[0] : loud[0] + MODEL_RATE // 2]
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment))))
    peak = np.fft.rfftfreq(len(segment), 1 / MODEL_RATE)[np.argmax(spectrum)]
    assert abs(peak - TONE_HZ) < 10.0


class StallingSink(CollectingSink):
    """Blocks on the first chunk, as a wedged consumer would: the source must drop, count and realign."""

    def on_audio(self, chunk) -> None:
        if not self.audio:
            time.sleep(STALL_S)
        super().on_audio(chunk)


STALL_S = 1.6  # s; longer than the source's 1 s queue plus its 0.2 s drift tolerance


def test_a_stalled_consumer_costs_counted_overflows_and_a_discontinuity(pulse_server: str) -> None:
    source = MicrophoneSource(pulse_server, sample_rate=MODEL_RATE)
    sink = StallingSink()
    source.start(sink, time.monotonic())
    try:
        assert wait_for(lambda: any(s.discontinuity for s in sink.statuses), STALL_S + 5.0), sink.statuses
        count = len(sink.audio)
        assert wait_for(lambda: len(sink.audio) > count + 10, 5.0)
    finally:
        source.stop()
    assert source.counters.audio_overflows > 0
    (jump,) = [s for s in sink.statuses if s.discontinuity]
    assert jump.level == "warning" and pulse_server in jump.message and not jump.ended
    times = [c.time for c in sink.audio]
    assert times == sorted(times)  # realigned forwards, never backwards
    gaps = np.diff(times) - np.array([len(c.samples) for c in sink.audio[:-1]]) / MODEL_RATE
    assert np.max(gaps) > 0.2 and np.sum(np.abs(gaps) > 1e-6) == 1  # one jump, continuous on both sides


def test_missing_microphone_reports_error_and_ends() -> None:
    source = MicrophoneSource("no such microphone 4711")
    sink = CollectingSink()
    source.start(sink, time.monotonic())
    try:
        assert sink.ended.wait(10.0), sink.statuses
    finally:
        source.stop()
    (status,) = sink.statuses
    assert status.level == "error" and status.ended
    assert "no such microphone 4711" in status.message
    assert sink.audio == []


def test_engine_runs_an_audio_only_stream_from_the_microphone(pulse_server: str, tmp_path: Path) -> None:
    """The microphone path end to end: sounddevice -> resampler -> ring -> log-mel -> model -> messages."""
    from avbind.models.weights import default_onnx
    from avbind.realtime.backends import create_backend
    from avbind.realtime.engine import Engine
    from avbind.realtime.postprocess.stream_outputs import OutputSettings
    from avbind.realtime.scheduler.stream import StreamSettings

    engine = Engine(create_backend(default_onnx()))
    messages: list[dict] = []
    engine.listeners.append(messages.append)
    engine.start()
    try:
        stream = engine.add_stream("mic", [MicrophoneSource(pulse_server, sample_rate=MODEL_RATE)],
                                   StreamSettings(outputs=OutputSettings(publish_steps=True)))
        assert wait_for(lambda: stream.counters.steps >= 2, 10.0), messages
        subprocess.run(["paplay", str(_tone_wav(tmp_path / "tone.wav"))], check=True, timeout=20)
        assert wait_for(lambda: any(m["type"] == "segment" for m in messages), 5.0)
    finally:
        engine.stop()
    steps = [m for m in messages if m["type"] == "step"]
    assert len(steps) >= 5
    assert all(m["modality_mask"] == [0.0, 1.0] for m in steps)  # audio only: the video stand-in is used
    assert [m["step"] for m in steps] == list(range(steps[0]["step"], steps[0]["step"] + len(steps)))
    assert not [m for m in messages if m["type"] == "status" and m["level"] == "error"]
    assert [m for m in messages if m["type"] == "status"][-1]["state"] == "ended"


def test_devices_lists_the_pulseaudio_input_by_the_names_the_source_takes(pulse_server: str) -> None:
    result = subprocess.run([avbind_exe(), "devices", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = [m["name"] for m in report["microphones"]]
    assert pulse_server in names and report["microphones_problem"] is None, report
    assert any(m["default"] for m in report["microphones"])
    # What it lists opens: the listed index, as --audio mic:INDEX would.
    index = next(m["index"] for m in report["microphones"] if m["name"] == pulse_server)
    source = MicrophoneSource(index, sample_rate=MODEL_RATE)
    sink = CollectingSink()
    source.start(sink, time.monotonic())
    try:
        assert wait_for(lambda: sink.audio, 10.0), sink.statuses
    finally:
        source.stop()
    table = subprocess.run([avbind_exe(), "devices"], capture_output=True, text=True, timeout=60).stdout
    assert f"{index:>3}  {pulse_server}  (" in table


def test_cameras_are_listed_from_video4linux_without_opening_them(tmp_path: Path) -> None:
    from avbind.realtime.sources.devices import list_cameras

    for node, name, index in (("video0", "Integrated Camera: Integrated C", 0), ("video1", "Integrated Camera", 1),
                              ("video10", "USB Capture HDMI", 0)):
        (tmp_path / node).mkdir()
        (tmp_path / node / "name").write_text(name + "\n")
        (tmp_path / node / "index").write_text(f"{index}\n")
    cameras, problem = list_cameras(tmp_path)
    # video1 is the first camera's metadata node (index 1): not a picture source.
    assert [(c.index, c.path, c.name) for c in cameras] == [
        (0, "/dev/video0", "Integrated Camera: Integrated C"), (10, "/dev/video10", "USB Capture HDMI")]
    assert problem is None
    assert list_cameras(tmp_path / "absent") == ([], "no Video4Linux capture device (/dev/video*) on this machine")
