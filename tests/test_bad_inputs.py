"""A corpus of bad and unusual inputs, each ending in a clear one-line error or a correct run.

Everything is generated here, small, with ffmpeg and PyAV: cut and random files, special paths,
huge and tiny frames, 1 and 120 fps, variable frame rate, timestamp jumps, a concatenation whose
audio drifts, audio muxed behind its video, odd sample rates and channel counts, unknown schemes,
dead endpoints and bad model files. The inputs all play as streams of one ``avbind run``
beside a good stream, as a user with a folder of odd files would run them: none may hang or print
a traceback, the good stream completes, and the exit status says whether any stream failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from avbind_testing import avbind_exe, free_port

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (apt ffmpeg)")

OK = "ok"  # the input must play: its stream ends well, with steps
REFUSED = "refused: "  # a path that can never be media: the command refuses it before anything starts


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, capture_output=True, timeout=120)


def _lavfi(out: Path, seconds: float = 2.0, size: str = "96x96", rate: float = 10, audio: str | None = "",
           extra: tuple[str, ...] = ()) -> Path:
    """A test pattern with a tone (``audio``: a ``sine`` option string; None: no audio)."""
    inputs = ["-f", "lavfi", "-t", str(seconds), "-i", f"testsrc=size={size}:rate={rate}"]
    if audio is not None:
        inputs += ["-f", "lavfi", "-t", str(seconds), "-i", f"sine=frequency=440:sample_rate=16000{audio}"]
    _ffmpeg(*inputs, "-c:v", "libx264", "-bf", "0", "-pix_fmt", "yuv420p", *extra, str(out))
    return out


def _vfr(out: Path) -> Path:
    """Frames at irregular intervals (30 to 250 ms), as phones and screen recorders write them."""
    rng = np.random.default_rng(0)
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=1000)
        video.width = video.height = 96
        video.pix_fmt = "yuv420p"
        video.time_base = Fraction(1, 1000)
        t = 0
        while t < 3000:
            frame = av.VideoFrame.from_ndarray(np.full((96, 96, 3), t % 255, np.uint8), format="rgb24")
            frame.pts = t
            container.mux(video.encode(frame))
            t += int(rng.integers(30, 250))
        container.mux(video.encode(None))
    return out


def _late_audio(src: Path, out: Path) -> Path:
    """The same streams with every audio packet after every video packet: audio 2 s behind in the file."""
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        packets = [p for p in inp.demux() if p.dts is not None and p.size]
        for packet in sorted(packets, key=lambda p: p.stream.type != "video"):
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    return out


def _jumped(src: Path, out: Path, jump_s: float) -> Path:
    """An MPEG-TS copy whose timestamps jump by ``jump_s`` after 1 s (a splice, a broken muxer)."""
    with av.open(str(src)) as inp, av.open(str(out), "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        start = None  # MPEG-TS clocks start anywhere (1.4 s here)
        for packet in inp.demux():
            if packet.dts is None or not packet.size:
                continue
            start = float(packet.dts * packet.time_base) if start is None else start
            if float(packet.dts * packet.time_base) >= start + 1.0:
                shift = round(jump_s / packet.time_base)
                packet.pts += shift
                packet.dts += shift
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    return out


def _ts_back(folder: Path, jump_s: float) -> Path:
    """Two MPEG-TS recordings joined byte by byte (``cat a.ts b.ts``), the second's clock ``jump_s`` earlier."""
    first = _lavfi(folder / "back_a.ts", extra=("-c:a", "aac", "-output_ts_offset", str(jump_s), "-f", "mpegts"))
    second = _lavfi(folder / "back_b.ts", extra=("-c:a", "aac", "-f", "mpegts"))
    out = folder / "jump_back.ts"
    out.write_bytes(first.read_bytes() + second.read_bytes())
    return out


def _concat(folder: Path) -> Path:
    parts = [_lavfi(folder / f"part{k}.mp4", seconds=1.0) for k in range(4)]
    (folder / "parts.txt").write_text("".join(f"file {p.name}\n" for p in parts))
    _ffmpeg("-f", "concat", "-safe", "0", "-i", str(folder / "parts.txt"), "-c", "copy", str(folder / "concat.mp4"))
    return folder / "concat.mp4"


def _cut(src: Path, out: Path, fraction: float) -> Path:
    data = src.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Input name -> (what to pass to ``--video``, OK or a phrase its one-line error must contain)."""
    d = tmp_path_factory.mktemp("corpus")
    good = _lavfi(d / "good.mp4", seconds=3.0)
    moov_last = _lavfi(d / "moov_last.mp4", seconds=3.0)
    faststart = _lavfi(d / "faststart.mp4", seconds=3.0, extra=("-movflags", "+faststart"))
    (d / "empty.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(1).bytes(20_000))
    (d / "text.mp4").write_text("this is not a video\n")
    os.mkfifo(d / "fifo.mp4")
    (d / "folder.mp4").mkdir()
    plain_ts = _lavfi(d / "plain.ts", seconds=3.0, extra=("-c:a", "aac", "-f", "mpegts"))
    dead_tcp = free_port()
    return {
        "good": (str(good), OK),
        "cut_moov_missing": (str(_cut(moov_last, d / "cut_moov_missing.mp4", 0.5)), "cannot open"),
        "cut_99_percent": (str(_cut(faststart, d / "cut_99_percent.mp4", 0.99)), OK),
        "empty": (str(d / "empty.mp4"), "cannot open"),
        "random": (str(d / "random.mp4"), "cannot open"),
        "text": (str(d / "text.mp4"), "cannot open"),
        "missing": (str(d / "missing.mp4"), "no such media file"),
        "fifo": (str(d / "fifo.mp4"), REFUSED + "is a FIFO"),  # av.open would block until a writer came
        "directory": (str(d / "folder.mp4"), REFUSED + "is a directory"),
        "huge_frames": (str(_lavfi(d / "huge.mp4", seconds=1.0, size="3840x2160", rate=2)), OK),
        "tiny_frames": (str(_lavfi(d / "tiny.mp4", size="16x16")), OK),
        "odd_frame_size": (str(_lavfi(d / "odd.mp4", size="97x61", extra=("-vf", "pad=98:62"))), OK),
        "fps_1": (str(_lavfi(d / "fps1.mp4", seconds=4.0, rate=1)), OK),
        "fps_120": (str(_lavfi(d / "fps120.mp4", rate=120)), OK),
        "vfr": (str(_vfr(d / "vfr.mp4")), OK),
        "no_audio": (str(_lavfi(d / "silent.mp4", audio=None)), OK),
        "audio_8k_stereo": (str(_lavfi(d / "a8k.mp4", audio=":duration=2", extra=("-ar", "8000", "-ac", "2"))), OK),
        "audio_44k_6ch": (str(_lavfi(d / "a44k.mkv", extra=("-c:a", "pcm_s16le", "-ar", "44100", "-ac", "6"))), OK),
        "audio_96k": (str(_lavfi(d / "a96k.mkv", extra=("-c:a", "flac", "-ar", "96000"))), OK),
        "late_audio": (str(_late_audio(good, d / "late_audio.mp4")), OK),
        "jump_ahead_1000s": (str(_jumped(plain_ts, d / "jump_ahead.ts", 1000.0)), OK),
        "jump_back_30s": (str(_ts_back(d, 30.0)), OK),
        "concat_drift": (str(_concat(d)), OK),
        "unknown_scheme": ("nosuchproto://camera/1", "cannot open"),
        "dead_rtsp": (f"rtsp://127.0.0.1:{dead_tcp}/cam", "giving up"),
        "dead_http": (f"http://127.0.0.1:{dead_tcp}/live.ts", "giving up"),
    }


def _summaries(stderr: str, names: list[str]) -> dict[str, str]:
    """Each stream's one summary line (``name: ok, N steps, ...`` or ``name: FAILED (...)``)."""
    out = {}
    for name in names:
        lines = [line for line in stderr.splitlines() if line.startswith(f"{name}: ")]
        assert len(lines) == 1, f"{name}: expected one summary line in\n{stderr}"
        out[name] = lines[0]
    return out


def _steps(summary: str) -> int:
    return int(summary.split(" steps,")[0].rsplit(", ", 1)[-1])


def test_every_input_of_the_corpus_ends_clearly_beside_a_good_stream(corpus: dict[str, tuple[str, str]]) -> None:
    names = [name for name, (_, expected) in corpus.items() if not expected.startswith(REFUSED)]
    # Unpaced, and no step is ever too old to run: every stream's count of steps is then fixed by its
    # content, not by how busy the machine is.
    args = [avbind_exe(), "run", "--publish", f"tcp://127.0.0.1:{free_port()}", "--quiet", "--speed", "0",
            "--max-lag-s", "10000", "--reconnect-for-s", "2", "--seconds", "400"]
    for name in names:
        args += ["--video", corpus[name][0], "--name", name]
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    report = result.stdout + result.stderr
    assert "Traceback" not in report, report
    assert elapsed < 400, f"the run only ended at --seconds: some stream hung\n{report}"
    for name in ("jump_ahead_1000s", "jump_back_30s"):  # reported, and played through (checked below)
        assert any(line.startswith(f"[{name}] warning: ") and "jumped by" in line for line in report.splitlines())
    assert any(line.startswith("[concat_drift] warning: ") and "realigned" in line for line in report.splitlines())
    summaries = _summaries(result.stderr, names)
    for name in names:
        expected, summary = corpus[name][1], summaries[name]
        if expected == OK:
            assert summary.startswith(f"{name}: ok, ") and _steps(summary) > 0, summary
        else:
            assert "FAILED" in summary and expected in summary, summary
            assert "\n" not in summary and len(summary) < 400, summary
    # Played through the jump, not cut at it: 3 s, and 2 s + 2 s, at 5 steps/s.
    assert _steps(summaries["jump_ahead_1000s"]) >= 14 and _steps(summaries["jump_back_30s"]) >= 19, summaries
    assert result.returncode == 1, report  # some streams failed, and the status says so


def test_the_playable_part_of_the_corpus_runs_clean(corpus: dict[str, tuple[str, str]]) -> None:
    names = [name for name, (_, expected) in corpus.items() if expected == OK]
    args = [avbind_exe(), "run", "--publish", f"tcp://127.0.0.1:{free_port()}", "--quiet", "--speed", "0",
            "--seconds", "400"]
    for name in names:
        args += ["--video", corpus[name][0], "--name", name]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert all(s.startswith(f"{n}: ok, ") for n, s in _summaries(result.stderr, names).items())


def test_paths_that_are_never_media_are_refused_before_the_run_starts(corpus: dict[str, tuple[str, str]]) -> None:
    for path, expected in corpus.values():
        if not expected.startswith(REFUSED):
            continue
        good = corpus["good"][0]
        result = subprocess.run([avbind_exe(), "run", "--publish", f"tcp://127.0.0.1:{free_port()}", "--quiet",
                                 "--video", good, "--video", path], capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        assert result.returncode != 0, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected.removeprefix(REFUSED) in lines[0] and path in lines[0], result.stderr


# -- the offline commands ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    (d / "random.onnx").write_bytes(np.random.default_rng(2).bytes(4096))
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.pt").write_bytes(np.random.default_rng(3).bytes(4096))
    from avbind.models.weights import default_onnx

    shipped = Path(default_onnx()).read_bytes()
    (d / "cut.onnx").write_bytes(shipped[: len(shipped) // 2])
    return {p.stem: p for p in d.iterdir()}


def _one_line_failure(args: list[str], *phrases: str) -> None:
    result = subprocess.run([avbind_exe(), *args], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("INFO ")]
    assert result.returncode == 1, f"{args}: {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr and len(lines) == 1, f"{args}:\n{result.stderr}"
    assert all(p in lines[0] for p in phrases), f"{args}: {lines[0]}"


def test_bad_model_files_end_every_command_in_one_line(bad_models: dict[str, Path], corpus, tmp_path: Path) -> None:
    good = corpus["good"][0]
    for name in ("random", "empty", "cut"):
        onnx = str(bad_models[name])
        _one_line_failure(["run", "--model", onnx, "--video", good, "--quiet"], onnx)
    onnx = str(bad_models["random"])
    _one_line_failure(["bench", "--model", onnx, "--steps", "2", "--engine-seconds", "0"], "avbind bench", onnx)
    _one_line_failure(["eval", "--model", onnx, "--data", str(tmp_path)], "avbind eval", onnx)
    _one_line_failure(["eval", "--data", str(tmp_path)], "avbind eval", "Annotations.txt", "AVE-layout")
    pt = str(bad_models["random"].with_suffix(".pt"))
    _one_line_failure(["export", "--checkpoint", pt, "--out", str(tmp_path / "x.onnx")], "avbind export", pt,
                      "not a readable avbind checkpoint")


def test_eval_skips_an_undecodable_clip_names_it_and_keeps_a_cut_one(tmp_path: Path) -> None:
    from avbind.models.data.ave import load_ave
    from avbind.models.data.avsynth import SIZES, write_dataset
    from avbind.models.weights import default_onnx

    root = write_dataset(tmp_path / "set", SIZES["tiny"], progress=False, workers=1)
    videos = load_ave(root, "train").videos
    broken, cut = videos[0].path, videos[1].path
    broken.write_bytes(np.random.default_rng(4).bytes(broken.stat().st_size))
    # A recording 99 % complete (moov first, as a streaming-friendly writer leaves it): live
    # playback plays it, so evaluation must too.
    faststart = tmp_path / "faststart.mp4"
    _ffmpeg("-i", str(cut), "-c", "copy", "-movflags", "+faststart", str(faststart))
    _cut(faststart, cut, 0.99)
    result = subprocess.run([avbind_exe(), "eval", "--model", str(default_onnx()), "--data", str(root),
                             "--split", "train"], capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"{len(videos) - 1} videos" in result.stdout and "(1 skipped: not decodable)" in result.stdout, result.stdout
    assert f"skipped {videos[0].video_id}: " in result.stdout
    assert str(cut) in result.stderr  # what was survived in the cut clip is said, not hidden

