"""EPIC-KITCHENS-100 end to end through ``avbind train`` and ``avbind eval``, on a stand-in folder.

The annotations are rows of the published validation CSV (videos whose first actions end within
12 s); the videos are generated here, named and laid out as the download scripts do and long
enough for those rows, at 50 and at 59.94 fps. The streamed model's predictions for the annotated
segments must equal the clip form's.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from avbind_testing import avbind_exe

from avbind.models.data.epic import parse_timestamp

EPIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "epic-kitchens-100"
TRAIN = ("P01_13", "P02_12")
VAL = ("P01_14", "P02_13")
FPS = {"P01_13": "50", "P02_12": "60000/1001", "P01_14": "60000/1001", "P02_13": "50"}
EARLY_S = 12.0

pytestmark = pytest.mark.skipif(not (EPIC / "EPIC_100_validation.csv").is_file(),
                                reason=f"EPIC-KITCHENS-100 annotations not in {EPIC} (see ../shared/data/README.md)")


def _write_video(path: Path, seconds: float, fps: str, tone: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={fps}",
                    "-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000", "-t", f"{seconds:.2f}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   check=True, timeout=120)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> tuple[Path, Path, dict[str, list[dict]]]:
    root = tmp_path_factory.mktemp("epic")
    annotations, videos = root / "annotations", root / "videos"
    annotations.mkdir()
    with (EPIC / "EPIC_100_validation.csv").open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        rows = [r for r in reader if r["video_id"] in TRAIN + VAL and parse_timestamp(r["stop_timestamp"]) < EARLY_S]
    picked = {v: [r for r in rows if r["video_id"] == v] for v in TRAIN + VAL}
    for name, ids in (("EPIC_100_train.csv", TRAIN), ("EPIC_100_validation.csv", VAL)):
        with (annotations / name).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, header)
            writer.writeheader()
            writer.writerows(r for v in ids for r in picked[v])
    for kind in ("verb", "noun"):
        (annotations / f"EPIC_100_{kind}_classes.csv").write_bytes((EPIC / f"EPIC_100_{kind}_classes.csv").read_bytes())
    for k, (video_id, actions) in enumerate(picked.items()):
        participant = video_id.split("_")[0]
        # Both layouts of the download scripts: <participant>/videos/<id>.MP4 and <participant>/<id>.MP4
        folder = videos / participant / "videos" if k % 2 == 0 else videos / participant
        seconds = max(parse_timestamp(r["stop_timestamp"]) for r in actions) + 3.0
        _write_video(folder / f"{video_id}.MP4", seconds, FPS[video_id], 300 + 100 * k)
    return annotations, videos, picked


def test_stand_in_checks_with_the_published_rows(stand_in) -> None:
    annotations, videos, picked = stand_in
    out = subprocess.run([avbind_exe(), "data", "check", "--annotations", str(annotations), "--videos", str(videos),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["format"] == "epic" and report["verbs"] == 97 and report["nouns"] == 300
    assert report["splits"]["train"]["segments"] == sum(len(picked[v]) for v in TRAIN)
    assert report["splits"]["validation"]["videos"] == len(VAL) and report["media"]["missing"] == 0


def test_steps_take_the_verb_and_noun_of_their_action(stand_in) -> None:
    from avbind.models.config import get_config
    from avbind.models.data.dataset import IGNORE, open_dataset
    from avbind.models.data.steps import prepare_dataset

    annotations, videos, picked = stand_in
    config = get_config("avbind-xs")
    dataset = open_dataset(None, "val", annotations=annotations, videos=videos)
    assert dataset.format == "epic" and len(dataset.class_names) == 97
    prepared = {v.video_id: v for v in prepare_dataset(dataset, config, annotations.parent / "c", progress=False)}
    for video_id in VAL:
        video = prepared[video_id]
        times = np.arange(len(video.labels)) / config.step_rate_hz
        rows = picked[video_id]
        assert len(video.actions) == len(rows)
        for row, (first, stop, event, verb, noun) in zip(rows, video.actions, strict=True):
            start_s, stop_s = parse_timestamp(row["start_timestamp"]), parse_timestamp(row["stop_timestamp"])
            assert (verb, noun, event) == (int(row["verb_class"]), int(row["noun_class"]), int(row["verb_class"]))
            inside = np.flatnonzero((times + 1e-6 >= start_s) & (times + 1e-6 < stop_s))
            assert [first, stop] == ([inside[0], inside[-1] + 1] if len(inside) else [first, first + 1])
        covered = np.zeros(len(times), bool)
        for row in rows:
            covered |= (times + 1e-6 >= parse_timestamp(row["start_timestamp"])) & (
                times + 1e-6 < parse_timestamp(row["stop_timestamp"]))
        assert np.array_equal(video.verbs != IGNORE, covered)  # background exactly between actions
        assert np.all(video.labels[~covered] == dataset.background)


def test_train_and_eval_end_to_end(stand_in, tmp_path: Path) -> None:
    annotations, videos, picked = stand_in
    where = ["--annotations", str(annotations), "--videos", str(videos), "--cache", str(tmp_path / "cache")]
    run = tmp_path / "run"
    trained = subprocess.run([avbind_exe(), "train", *where, "--out", str(run), "--config", "avbind-xs",
                              "--epochs", "1", "--crops-per-video", "2", "--batch-size", "2", "--threads", "2"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = subprocess.run([avbind_exe(), "eval", "--checkpoint", str(run / "model.pt"), *where, "--split", "val",
                                "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "annotated segments" in evaluated.stdout
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["format"] == "epic" and report["videos"] == len(VAL) and report["skipped"] == []
    assert report["annotated_segments"] == sum(len(picked[v]) for v in VAL)
    fusion = report["ablations"]["fusion"]
    for form in ("offline", "streaming"):
        annotated = fusion[form]["annotated"]
        assert annotated["segments"] == report["annotated_segments"]
        assert {f"{h}_top{k}" for h in ("event", "verb", "noun", "action") for k in (1, 5)} <= set(annotated)
        assert all(0 <= annotated[k] <= 1 for k in annotated if k != "segments")
        assert set(fusion[form]["verb_noun"]) >= {"verb_top1", "noun_top5", "action_top1"}  # per-step figures
    assert fusion["annotated_stream_offline_agreement"] == 1.0
    assert fusion["stream_offline_agreement"] == 1.0

    import torch

    from avbind.models.checkpoint import load_model

    model = load_model(run / "model.pt")
    assert len(model.verb_names) == 97 and len(model.noun_names) == 300
    # The action prior counts the training steps' (verb, noun) pairs: only those pairs have mass.
    prior = model.heads.verb_noun.prior
    pairs = {(int(r["verb_class"]), int(r["noun_class"])) for v in TRAIN for r in picked[v]}
    assert {tuple(ix) for ix in torch.nonzero(prior > 0).tolist()} <= pairs
