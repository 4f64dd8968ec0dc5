"""Training (deterministic, resumable), evaluation and the train/eval/export commands, on a tiny set."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avbind_testing import avbind_exe  # noqa: E402

from avbind.models.checkpoint import load_checkpoint, load_model  # noqa: E402
from avbind.models.config import TrainConfig  # noqa: E402
from avbind.models.data.avsynth import SIZES, write_dataset  # noqa: E402
from avbind.models.evaluation import agreement, evaluate, score, segment_predictions  # noqa: E402
from avbind.models.training import train  # noqa: E402

TINY = TrainConfig(model="avbind-xs", epochs=2, crops_per_video=2, crop_steps=10, batch_size=4, threads=2)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("avsynth") / "tiny", SIZES["tiny"], progress=False)


@pytest.fixture(scope="module")
def trained(tiny_set: Path, tmp_path_factory) -> Path:
    return train(tiny_set, tmp_path_factory.mktemp("run"), TINY, progress=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def test_checkpoint_carries_everything_to_run(trained: Path, tiny_set: Path) -> None:
    model = load_model(trained)
    classes = (tiny_set / "classes.txt").read_text().split("\n")
    assert model.class_names == [c for c in classes if c]
    assert model.verb_names and model.noun_names and model.config.heads.num_verbs == len(model.verb_names)
    payload = load_checkpoint(trained)
    assert "optimizer" not in payload  # the deliverable is weights only
    assert payload["train_state"]["epoch"] == TINY.epochs
    history = payload["train_state"]["history"]
    assert len(history) == TINY.epochs and all(np.isfinite(h["loss"]) for h in history)
    # The action prior was counted from the data: only (verb, noun) pairs that exist get mass.
    prior = model.heads.verb_noun.prior
    assert float(prior.sum()) == pytest.approx(1.0) and int((prior > 0).sum()) <= len(model.class_names)


def test_training_is_deterministic(tiny_set: Path, trained: Path, tmp_path: Path) -> None:
    """Also: activation checkpointing (on by default on CPU) trains exactly as keeping them does."""
    assert TINY.checkpointing == "auto"
    again = train(tiny_set, tmp_path / "again", replace(TINY, checkpointing="off"), progress=False)
    for name, tensor in _weights(trained).items():
        assert torch.equal(tensor, _weights(again)[name]), name


def test_checkpointing_keeps_gradients_and_statistics_and_halves_activations() -> None:
    from avbind.models.config import get_config
    from avbind.models.network import AVBindNet

    torch.manual_seed(0)
    net = AVBindNet(get_config("avbind-xs")).train()
    frames = torch.rand(2, 6, 3, net.config.video.input_size, net.config.video.input_size)
    mels = torch.randn(2, 6, *net._audio_shape())
    results = []
    for on in (False, True):
        net.video.checkpointing = on
        torch.manual_seed(1)  # the same dropout draws in both runs
        start = {k: v.clone() for k, v in net.state_dict().items()}
        net.zero_grad(set_to_none=True)
        saved = []  # bytes autograd keeps for backward, counted by its own hooks
        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outputs, _ = net(frames, mels)
            loss = sum(v.float().square().mean() for v in outputs.values())
        loss.backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results.append((loss.item(), grads, {k: v.clone() for k, v in net.state_dict().items()}, sum(saved)))
        net.load_state_dict(start)
    (loss_off, grads_off, stats_off, saved_off), (loss_on, grads_on, stats_on, saved_on) = results
    assert loss_on == loss_off
    assert grads_on.keys() == grads_off.keys() and all(torch.equal(grads_on[k], grads_off[k]) for k in grads_off)
    assert all(torch.equal(stats_on[k], stats_off[k]) for k in stats_off)  # running stats moved once, not twice
    assert saved_on < saved_off / 2


def test_interrupted_training_resumes_to_the_same_weights(tiny_set: Path, trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_set, run, TINY, progress=False, stop_after=1)
    assert load_checkpoint(run / "last.pt")["train_state"]["epoch"] == 1
    assert not (run / "model.pt").exists()  # unfinished runs leave no deliverable
    with pytest.raises(ValueError, match="different settings"):
        train(tiny_set, run, replace(TINY, lr=1e-4), resume=True, progress=False)
    resumed = train(tiny_set, run, TINY, resume=True, progress=False)
    assert load_checkpoint(resumed)["train_state"]["epoch"] == TINY.epochs
    for name, tensor in _weights(trained).items():
        assert torch.equal(tensor, _weights(resumed)[name]), name


def test_segment_scoring_on_a_hand_computed_case() -> None:
    # Two segments of three steps; classes [a, b, background].
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1],  # sums: a 1.2, b 1.5 -> b
                      [0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]])  # sums: a 1.2, bg 1.0 -> a
    # (segment 1's single most confident step says background; the mean over the segment wins)
    segments = np.array([0, 0, 0, 1, 1, 1])
    assert list(segment_predictions(probs, segments, 2)) == [1, 0]


def test_evaluation_report(trained: Path, tiny_set: Path, tmp_path: Path) -> None:
    report = evaluate(trained, tiny_set, "test", tmp_path / "eval", progress=False)
    fusion = report["ablations"]["fusion"]
    assert set(report["ablations"]) == {"fusion", "video only", "audio only"}
    assert report["segments"] == 10 * report["videos"]
    for entry in report["ablations"].values():
        assert 0.0 <= entry["offline"]["segment_accuracy"] <= 1.0
        png = Path(entry["confusion_png"])
        import cv2

        image = cv2.imread(str(png))
        assert image is not None and image.shape[0] > 200 and image.std() > 10  # a drawn matrix, not blank
    # The streaming form is the same network: it must agree with the offline form.
    assert fusion["stream_offline_agreement"] >= 0.99
    assert fusion["streaming"]["segment_accuracy"] == pytest.approx(fusion["offline"]["segment_accuracy"], abs=0.02)
    assert set(fusion["offline"]["verb_noun"]) >= {"verb_top1", "noun_top5", "action_top1"}
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["videos"] == report["videos"]


def test_agreement_counts_matching_segments() -> None:
    from avbind.models.evaluation import FormResult

    a = FormResult(0.0, {}, [], [[0, 1, 2], [3]])
    b = FormResult(0.0, {}, [], [[0, 1, 1], [3]])
    assert agreement(a, b) == 0.75
    empty = score([], [], ["x", "background"])
    assert np.isnan(empty.segment_accuracy)


@pytest.mark.slow
def test_train_eval_export_commands(tiny_set: Path, tmp_path: Path) -> None:
    run = tmp_path / "cli-run"
    subprocess.run([avbind_exe(), "train", "--data", str(tiny_set), "--out", str(run), "--config", "avbind-xs",
                    "--epochs", "1", "--crop-steps", "10", "--crops-per-video", "1", "--batch-size", "2"],
                   check=True, capture_output=True, timeout=600)
    assert (run / "model.pt").is_file()
    evaluated = subprocess.run([avbind_exe(), "eval", "--checkpoint", str(run / "model.pt"), "--data", str(tiny_set),
                                "--no-streaming"], check=True, capture_output=True, text=True, timeout=600)
    assert "fusion" in evaluated.stdout and "video only" in evaluated.stdout
    exported = subprocess.run([avbind_exe(), "export", "--checkpoint", str(run / "model.pt"), "--out",
                               str(tmp_path / "m.onnx")], check=True, capture_output=True, text=True, timeout=600)
    assert "ONNX:" in exported.stdout
    from avbind.realtime.backends import read_model_info

    info = read_model_info(tmp_path / "m.onnx")
    assert list(info.class_names) == load_model(run / "model.pt").class_names and info.verb_names
