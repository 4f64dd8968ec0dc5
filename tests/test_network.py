"""The clip form (training) and the step form (streaming) are one network."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from avbind_testing import calibrated_model, random_clip  # noqa: E402

from avbind.models.config import get_config  # noqa: E402
from avbind.models.network import AVBindNet, InputShapeError  # noqa: E402

TOLERANCE = 1e-5  # float32, max abs difference


# The default model, a small one with the optional verb/noun heads, and the EfficientNet-Lite0
# backbone (kernels 3 and 5, TensorFlow padding) at 160 px.
@pytest.fixture(scope="module", params=["avbind-s", "avbind-xs-verbnoun", "avbind-lite0-160"])
def model(request) -> AVBindNet:
    if request.param == "avbind-xs-verbnoun":
        return calibrated_model(get_config("avbind-xs", num_verbs=5, num_nouns=7))
    if request.param == "avbind-lite0-160":
        config = get_config("avbind-lite0")
        return calibrated_model(replace(config, video=replace(config.video, input_size=160)))
    return calibrated_model(get_config(request.param))


def _clip(model: AVBindNet, batch: int, time: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return random_clip(model, batch, time, seed)


def _run_steps(model, frames, log_mels, mask=None, state=None):
    n, t = frames.shape[:2]
    state = model.initial_state(n) if state is None else state
    outs = []
    for i in range(t):
        out, state = model.step(frames[:, i], log_mels[:, i], None if mask is None else mask[:, i], state)
        outs.append(out)
    return {k: torch.stack([o[k] for o in outs], dim=1) for k in outs[0]}, state


def _max_diff(a: dict, b: dict) -> dict[str, float]:
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("time", [1, 8, 30])
@torch.no_grad()
def test_step_form_reproduces_clip_form(model: AVBindNet, batch: int, time: int) -> None:
    frames, log_mels = _clip(model, batch, time, seed=batch * 100 + time)
    clip_out, clip_state = model(frames, log_mels)
    step_out, step_state = _run_steps(model, frames, log_mels)
    assert set(clip_out) == set(model.output_names())
    diffs = _max_diff(clip_out, step_out)
    assert max(diffs.values()) <= TOLERANCE, diffs
    for spec, a, b in zip(model.state_specs(), clip_state, step_state, strict=True):
        assert a.shape == b.shape == (batch, *spec.shape)
        assert float((a - b).abs().max()) <= TOLERANCE, spec.name
    # Guard against a vacuous pass: another input moves the outputs far more than the tolerance.
    other_frames, other_mels = _clip(model, batch, time, seed=999)
    assert _max_diff(model(other_frames, other_mels)[0], clip_out)["event_logits"] > 10 * TOLERANCE


@torch.no_grad()
def test_reset_state_reproduces_fresh_clip(model: AVBindNet) -> None:
    frames_a, mels_a = _clip(model, 2, 6, seed=1)
    frames_b, mels_b = _clip(model, 2, 5, seed=2)
    _, carried = _run_steps(model, frames_a, mels_a)
    fresh, _ = model(frames_b, mels_b)
    after_reset, _ = _run_steps(model, frames_b, mels_b, state=model.initial_state(2))
    assert max(_max_diff(fresh, after_reset).values()) <= TOLERANCE
    # Without the reset, history leaks in: the carried state must change the result.
    continued, _ = _run_steps(model, frames_b, mels_b, state=carried)
    assert _max_diff(fresh, continued)["event_logits"] > 1e-4


@torch.no_grad()
def test_clip_form_continues_from_state(model: AVBindNet) -> None:
    frames, mels = _clip(model, 2, 10, seed=3)
    whole, whole_state = model(frames, mels)
    first, state = model(frames[:, :4], mels[:, :4])
    second, end_state = model(frames[:, 4:], mels[:, 4:], state=state)
    joined = {k: torch.cat([first[k], second[k]], dim=1) for k in whole}
    assert max(_max_diff(whole, joined).values()) <= TOLERANCE
    assert all(float((a - b).abs().max()) <= TOLERANCE for a, b in zip(whole_state, end_state, strict=True))


@torch.no_grad()
def test_video_shift_is_causal_and_uses_the_past(model: AVBindNet) -> None:
    frames, _ = _clip(model, 1, 5, seed=4)
    state = model.initial_state(1)[: len(model.video.state_shapes())]
    base, _ = model.video.forward_clip(frames, state)
    changed_past = frames.clone()
    changed_past[:, 1] = torch.rand_like(changed_past[:, 1])
    past, _ = model.video.forward_clip(changed_past, state)
    changed_future = frames.clone()
    changed_future[:, 3] = torch.rand_like(changed_future[:, 3])
    future, _ = model.video.forward_clip(changed_future, state)
    # Frame 2's features see frame 1 through the shift, and never frame 3.
    assert float((past[:, 2] - base[:, 2]).abs().max()) > 1e-4
    assert float((future[:, :3] - base[:, :3]).abs().max()) == 0.0


@torch.no_grad()
def test_missing_modality_ignores_that_input(model: AVBindNet) -> None:
    frames, mels = _clip(model, 2, 4, seed=5)
    other_frames, other_mels = _clip(model, 2, 4, seed=6)
    no_audio = torch.tensor([1.0, 0.0]).expand(2, 4, 2).contiguous()
    a, _ = model(frames, mels, no_audio)
    b, _ = model(frames, other_mels, no_audio)
    assert max(_max_diff(a, b).values()) == 0.0
    no_video = torch.tensor([0.0, 1.0]).expand(2, 4, 2).contiguous()
    c, _ = model(frames, mels, no_video)
    d, _ = model(other_frames, mels, no_video)
    assert max(_max_diff(c, d).values()) == 0.0
    # The mask matters: with both present, the audio does change the output.
    assert _max_diff(model(frames, mels)[0], model(frames, other_mels)[0])["event_logits"] > 1e-4
    for out in (a, c):
        probs = out["event_logits"].softmax(-1)
        assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(2, 4))
        assert ((out["relevance"] >= 0) & (out["relevance"] <= 1)).all()


@torch.no_grad()
def test_verb_noun_action_scores() -> None:
    model = calibrated_model(get_config("avbind-xs", num_verbs=5, num_nouns=7))
    counts = torch.arange(35, dtype=torch.float32).view(5, 7)
    model.heads.verb_noun.set_prior(counts)
    frames, mels = _clip(model, 2, 3, seed=7)
    out, _ = model(frames, mels)
    v, n = model.config.heads.num_verbs, model.config.heads.num_nouns
    assert out["action_scores"].shape == (2, 3, v, n)
    p_verb, p_noun = out["verb_logits"].softmax(-1), out["noun_logits"].softmax(-1)
    prior = (counts + 1) / (counts + 1).sum()
    expected = prior * p_verb[..., :, None] * p_noun[..., None, :]
    assert torch.allclose(out["action_scores"], expected, atol=1e-7)


def test_shape_and_dtype_errors_name_expected_and_received(model: AVBindNet) -> None:
    c = model.config
    s, f, m = c.video.input_size, c.audio.window_frames, c.features.n_mels
    state = model.initial_state(2)
    good_frame, good_mel = torch.rand(2, 3, s, s), torch.zeros(2, f, m)
    with pytest.raises(InputShapeError, match=rf"frame: expected shape \(batch, 3, {s}, {s}\) dtype float32, "
                                              r"got \(2, 3, 64, 64\) dtype float32"):
        model.step(torch.rand(2, 3, 64, 64), good_mel, None, state)
    with pytest.raises(InputShapeError, match=rf"log_mel: expected shape \(2, {f}, {m}\).*got \(2, {f}, 40\)"):
        model.step(good_frame, torch.zeros(2, f, 40), None, state)
    with pytest.raises(InputShapeError, match=r"got \(2, 3, \d+, \d+\) dtype float64"):
        model.step(good_frame.double(), good_mel, None, state)
    with pytest.raises(InputShapeError, match=r"modality_mask: expected shape \(2, 2\).*got \(2, 3\)"):
        model.step(good_frame, good_mel, torch.ones(2, 3), state)
    with pytest.raises(InputShapeError, match=r"state: expected \d+ tensors, got 2"):
        model.step(good_frame, good_mel, None, state[:2])
    with pytest.raises(InputShapeError, match=r"state shift_0: expected shape \(2, "):
        model.step(good_frame, good_mel, None, model.initial_state(1))
    clip_shape = rf"frames: expected shape \(batch, time, 3, {s}, {s}\).*got \(2, 3, {s}, {s}\)"
    with pytest.raises(InputShapeError, match=clip_shape):
        model(good_frame, good_mel)
    with pytest.raises(InputShapeError, match="got ndarray"):
        model.step(np.zeros((2, 3, s, s), np.float32), good_mel, None, state)
