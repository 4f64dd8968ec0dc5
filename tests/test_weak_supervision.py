"""Weak supervision: each loss part against hand-computed cases, the relevance-gated output, and a
tiny weak training run whose model streams like a supervised one."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avbind.models.checkpoint import load_checkpoint, load_model  # noqa: E402
from avbind.models.config import WeakTrainConfig, get_config  # noqa: E402
from avbind.models.data.avsynth import SIZES, write_dataset  # noqa: E402
from avbind.models.evaluation import evaluate  # noqa: E402
from avbind.models.heads import relevance_gated_logits  # noqa: E402
from avbind.models.network import AVBindNet  # noqa: E402
from avbind.models.weak_supervision import (  # noqa: E402
    RegionMemoryBank,
    WarmKMeans,
    background_suppression_losses,
    cluster_confidence,
    info_nce,
    mean_threshold_pseudo_labels,
    mil_loss,
    pseudo_label_loss,
    region_features,
    topk_pool,
    video_class_loss,
)
from avbind.models.weak_training import (  # noqa: E402
    WeakTrainingHeads,
    WeakVideo,
    encoder_class_scores,
    train_weak,
    video_level_labels,
)


def test_topk_pool_and_mil_loss_by_hand() -> None:
    cas = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [2.0, 4.0], [0.0, 1.0]]])  # (1, T=4, K=2)
    assert topk_pool(cas, 2).tolist() == [[2.5, 2.5]]
    assert topk_pool(cas, 99).tolist() == [[1.5, 1.25]]  # k is capped at T
    target = torch.tensor([[1.0, 0.0]])
    scores = torch.tensor([2.5, 2.5])
    assert float(mil_loss(cas, target, 2)) == pytest.approx(-float(torch.log_softmax(scores, 0)[0]))
    both = torch.tensor([[1.0, 1.0]])  # a multi-label video splits its target mass
    expected = -0.5 * float(torch.log_softmax(scores, 0).sum())
    assert float(mil_loss(cas, both, 2)) == pytest.approx(expected)


def test_video_class_loss_by_hand() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # (1, T=2, C=3)
    one = torch.tensor([[0.0, 0.0, 1.0]])
    log_p = torch.log_softmax(logits, dim=-1)[0]
    expected = -(log_p[0, 2] + log_p[1, 2]) / 2  # every step, whatever it shows, against the video's class
    assert float(video_class_loss(logits, one)) == pytest.approx(float(expected))
    both = torch.tensor([[1.0, 0.0, 1.0]])  # two classes share the target mass
    expected = -0.5 * (log_p[:, 0] + log_p[:, 2]).mean()
    assert float(video_class_loss(logits, both)) == pytest.approx(float(expected))
    # Only the class choice is judged: adding the same amount to every class changes nothing.
    assert float(video_class_loss(logits + 5.0, one)) == pytest.approx(float(video_class_loss(logits, one)))


def test_gated_logits_are_a_noisy_or_of_relevance_and_the_heads_background() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])  # two classes, then background
    r = torch.tensor([0.3])
    probs = relevance_gated_logits(logits, r).softmax(-1)
    head = logits.softmax(-1)
    foreground = 0.3 * (1 - head[0, 2])  # an event only where the relevance and the head both say so
    expected = torch.tensor([[foreground * head[0, 0] / (1 - head[0, 2]), foreground * head[0, 1] / (1 - head[0, 2]),
                              1 - foreground]])
    torch.testing.assert_close(probs, expected)
    # A head that is sure of background gates everything off, whatever the relevance.
    sure = relevance_gated_logits(torch.tensor([[0.0, 0.0, 20.0]]), torch.tensor([1.0])).softmax(-1)
    assert float(sure[0, -1]) > 0.999


def test_background_suppression_branches() -> None:
    layer = torch.nn.Linear(2, 3)  # 2 classes + background
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    hidden = torch.tensor([[[4.0, 0.0], [0.0, 0.0]]])  # step 0 looks like class 0, step 1 like nothing
    classes = torch.tensor([[1.0, 0.0]])
    on_event = background_suppression_losses(layer, hidden, torch.tensor([[1.0, 0.0]]), classes, k=1)
    everywhere = background_suppression_losses(layer, hidden, torch.tensor([[1.0, 1.0]]), classes, k=1)
    nowhere = background_suppression_losses(layer, hidden, torch.tensor([[0.0, 0.0]]), classes, k=1)
    # The base branch ignores the filter; the filtered one wants the class but no background.
    assert float(on_event["base"]) == float(everywhere["base"]) == float(nowhere["base"])
    assert float(on_event["filtered"]) < float(nowhere["filtered"])
    assert float(on_event["norm"]) == 0.5 and float(everywhere["norm"]) == 1.0


def test_warm_kmeans_finds_separated_clusters_and_keeps_them() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(50, 2, generator=g) for c in centres])
    kmeans = WarmKMeans(3, iterations=10, seed=1)
    assign = kmeans(x)
    groups = [set(assign[i * 50 : (i + 1) * 50].tolist()) for i in range(3)]
    assert all(len(s) == 1 for s in groups) and len(set.union(*groups)) == 3
    first = kmeans.centroids.clone()
    warm = WarmKMeans(3, iterations=1, seed=1)
    warm.centroids = first
    assert torch.equal(warm(x + 0.01), assign)  # one warm iteration on shifted data: same clusters
    with pytest.raises(ValueError, match="3 clusters"):
        WarmKMeans(3)(x[:2])


def test_pseudo_labels_and_cluster_confidence_by_hand() -> None:
    scores = torch.tensor([[[0.9, 0.5], [0.8, 0.5], [0.1, 0.5], [0.2, 0.9]]])  # (1, T=4, C=2)
    classes = torch.tensor([[1.0, 0.0]])  # only class 0 is in the video
    pseudo = mean_threshold_pseudo_labels(scores, classes)
    assert pseudo[0, :, 0].tolist() == [1, 1, 0, 0] and pseudo[0, :, 1].tolist() == [0, 0, 0, 0]
    clusters = torch.tensor([[0, 0, 0, 1]])  # steps 0-2 together, step 3 alone
    conf = cluster_confidence(pseudo, clusters, 2)
    # Cluster 0 holds labels 1, 1, 0: the 1s are trusted 2/3, the 0 only 1/3; step 3 is alone: 1.
    assert conf[0, :, 0].tolist() == pytest.approx([2 / 3, 2 / 3, 1 / 3, 1.0])


def test_pseudo_label_loss_targets_and_weights() -> None:
    logits = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0))  # 2 classes + background
    scores = torch.tensor([[[0.9, 0.0], [0.1, 0.0], [0.8, 0.0]]])
    pseudo = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
    confidence = torch.tensor([[[1.0, 1.0], [0.5, 1.0], [0.0, 1.0]]])  # step 2's label is not trusted at all
    loss = pseudo_label_loss(logits, scores, pseudo, confidence, torch.tensor([[1.0, 0.0]]))
    ce = torch.nn.functional.cross_entropy(logits[0], torch.tensor([0, 2, 0]), reduction="none")
    assert float(loss) == pytest.approx(float((ce[0] * 1.0 + ce[1] * 0.5) / 1.5))


def test_region_features_weighted_means() -> None:
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    regions, valid = region_features(x, w, 2)
    assert valid.tolist() == [[True, False]]
    torch.testing.assert_close(regions[0, 0], torch.tensor([1.0, 0.0]))


def test_info_nce_prefers_aligned_positives_and_never_uses_self() -> None:
    a = torch.tensor([[1.0, 0.0]])
    good = info_nce(a, torch.tensor([0]), torch.tensor([0]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
                    torch.tensor([0, 5, 0]), torch.tensor([0, 1, 2]), 0.1)
    bad = info_nce(a, torch.tensor([0]), torch.tensor([0]), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]),
                   torch.tensor([0, 5, 0]), torch.tensor([0, 1, 2]), 0.1)
    # good: the positive (id 2) matches, the negative (id 1) is orthogonal: -log(e^10 / (e^10 + e^0)).
    assert float(good) == pytest.approx(math.log1p(math.exp(-10)), abs=1e-6)
    assert float(bad) > 9.0
    alone = info_nce(a, torch.tensor([0]), torch.tensor([0]), a, torch.tensor([0]), torch.tensor([0]), 0.1)
    assert float(alone) == 0.0  # the anchor itself is no positive


def test_memory_bank_is_first_in_first_out() -> None:
    bank = RegionMemoryBank(3, 2)
    bank.add(torch.eye(2)[[0, 1, 0, 1]], torch.tensor([1, 2, 3, 4]), torch.tensor([10, 11, 12, 13]))
    feats, labels, ids = bank.contents(torch.device("cpu"))
    assert sorted(labels.tolist()) == [2, 3, 4] and sorted(ids.tolist()) == [11, 12, 13] and len(feats) == 3


def test_gated_model_step_form_matches_clip_form() -> None:
    base = get_config("avbind-xs")
    torch.manual_seed(0)
    model = AVBindNet(replace(base, heads=replace(base.heads, gate_by_relevance=True))).eval()
    g = torch.Generator().manual_seed(1)
    size, c = base.video.input_size, base.audio
    frames = torch.rand(2, 6, 3, size, size, generator=g)
    mels = torch.randn(2, 6, c.window_frames, base.features.n_mels, generator=g)
    with torch.no_grad():
        clip, _ = model(frames, mels, return_features=True)
        state = model.initial_state(2)
        for t in range(6):
            out, state = model.step(frames[:, t], mels[:, t], None, state)
            torch.testing.assert_close(out["event_logits"], clip["event_logits"][:, t], atol=1e-5, rtol=1e-5)
    probs = clip["event_logits"].softmax(-1)
    with torch.no_grad():
        head = model.heads.event(clip["hidden"]).softmax(-1)[..., -1]
    torch.testing.assert_close(probs[..., -1], 1 - clip["relevance"] * (1 - head), atol=1e-5, rtol=1e-5)


class _Prepared:
    def __init__(self, labels: list[int]) -> None:
        self.labels = np.array(labels)
        self.verbs = np.where(self.labels < 3, self.labels, -100)
        self.nouns = np.where(self.labels < 3, 0, -100)


def test_video_level_labels_keep_which_not_when() -> None:
    (weak,) = video_level_labels([_Prepared([3, 3, 1, 1, 3])], num_classes=3, num_verbs=3, num_nouns=1)
    assert weak.classes.tolist() == [0, 1, 0] and weak.verbs.tolist() == [0, 1, 0] and weak.nouns.tolist() == [1]
    assert {f for f in WeakVideo.__dataclass_fields__} == {"video", "classes", "verbs", "nouns"}


def test_encoder_class_scores_average_only_the_modalities_a_step_has() -> None:
    model = AVBindNet(get_config("avbind-xs"))
    extra = WeakTrainingHeads(model, projection_dim=8)
    c = model.config
    outputs = {"video_features": torch.randn(2, 3, c.video.last_channels),
               "audio_features": torch.randn(2, 3, c.audio.embed_dim)}
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).expand(2, 3, 2)  # both, video only, audio only
    scores = encoder_class_scores(extra, outputs, mask)
    video = extra.video(outputs["video_features"]).softmax(-1)
    audio = extra.audio(outputs["audio_features"]).softmax(-1)
    torch.testing.assert_close(scores[:, 0], (video[:, 0] + audio[:, 0]) / 2)
    torch.testing.assert_close(scores[:, 1], video[:, 1])
    torch.testing.assert_close(scores[:, 2], audio[:, 2])
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="pseudo_labels_from"):
        WeakTrainConfig(pseudo_labels_from="relevance")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("avsynth") / "tiny", SIZES["tiny"], progress=False)


def test_weak_training_writes_a_streamable_gated_model(tiny_set: Path, tmp_path: Path) -> None:
    tc = WeakTrainConfig(model="avbind-xs", crop_epochs=1, epochs=1, batch_size=3, crop_batch_size=4, threads=2,
                         kmeans_clusters=4)
    path = train_weak(tiny_set, tmp_path / "run", tc, progress=False)
    model = load_model(path)
    assert model.config.heads.gate_by_relevance
    history = load_checkpoint(path)["train_state"]["history"]
    assert [h["stage"] for h in history] == ["crops", "videos"]
    assert {"video_class", "auxiliary", "verb_noun"} == set(history[0]) - {"epoch", "stage", "loss", "seconds"}
    assert {"base", "filtered", "norm", "contrast", "pseudo_label", "video_class", "auxiliary"} <= set(history[1])
    assert 0 < history[1]["kmeans_share_of_step_time"] < 1
    report = evaluate(model, tiny_set, "test", ablations=("fusion",), progress=False)
    assert report["ablations"]["fusion"]["stream_offline_agreement"] == 1.0
    # Without the filtered branch the relevance is untrained: the plain background logit is used.
    plain = train_weak(tiny_set, tmp_path / "plain", replace(tc, crop_epochs=0, suppression_weight=0.0,
                                                             contrast_weight=0.0), progress=False)
    assert not load_model(plain).config.heads.gate_by_relevance


@pytest.mark.slow
def test_whole_video_stage_can_start_from_a_shared_crop_stage(tiny_set: Path, tmp_path: Path) -> None:
    tc = WeakTrainConfig(model="avbind-xs", crop_epochs=1, epochs=0, crop_batch_size=4, threads=2)
    crops = train_weak(tiny_set, tmp_path / "crops", tc, progress=False).parent / "last.pt"
    whole = replace(tc, epochs=1, batch_size=3, kmeans_clusters=4, contrast_weight=0.0)
    a = train_weak(tiny_set, tmp_path / "a", whole, progress=False, warm_start=crops)
    b = train_weak(tiny_set, tmp_path / "b", whole, progress=False)  # its own crop stage, same seed
    history = load_checkpoint(a)["train_state"]["history"]
    assert [h["stage"] for h in history] == ["crops", "videos"]
    for x, y in zip(load_model(a).state_dict().values(), load_model(b).state_dict().values(), strict=True):
        torch.testing.assert_close(x, y)  # sharing the crop stage is the same as training it again
    with pytest.raises(ValueError, match="crop stage"):
        train_weak(tiny_set, tmp_path / "c", replace(whole, crop_epochs=2), progress=False, warm_start=crops)


@pytest.mark.slow
def test_ablation_shares_the_crop_stage_and_resumes(tiny_set: Path, tmp_path: Path) -> None:
    from avbind.models.weak_training import run_weak_ablation

    tc = WeakTrainConfig(model="avbind-xs", crop_epochs=1, epochs=1, batch_size=3, crop_batch_size=4, threads=2,
                         kmeans_clusters=4)
    variants = {"full": {}, "without contrast": {"contrast_weight": 0.0}}
    results = run_weak_ablation(tiny_set, tiny_set, tmp_path, tc, variants, progress=False)
    assert set(results) == set(variants)
    for name, result in results.items():
        assert 0 <= result["segment_accuracy"] <= 1 and "mAP@0.5" in result["localization"]
        history = load_checkpoint(tmp_path / name.replace(" ", "-") / "model.pt")["train_state"]["history"]
        assert [h["stage"] for h in history] == ["crops", "videos"]
    assert len(list(tmp_path.glob("*/model.pt"))) == 3  # the crop stage and the two variants
    # A second call (an interrupted run started again) reuses what is finished and trains nothing.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/model.pt")}
    assert run_weak_ablation(tiny_set, tiny_set, tmp_path, tc, variants, progress=False) == results
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/model.pt")}
    with pytest.raises(ValueError, match="changes the crop stage"):
        run_weak_ablation(tiny_set, tiny_set, tmp_path, tc, {"other lr": {"lr": 1e-4}}, progress=False)
    # A recipe that differs only after the crop stage still starts from the finished crop stage.
    crop_stage = tmp_path / "crop-stage" / "model.pt"
    run_weak_ablation(tiny_set, tiny_set, tmp_path, replace(tc, whole_video_lr=5e-4), {"later": {}}, progress=False)
    assert crop_stage.stat().st_mtime_ns == stamps[crop_stage]
