"""Checkpoints: the configuration as a plain dict beside the weights, rebuilt by one call.

Class names and feature settings travel inside the file, so a checkpoint alone is enough to run,
evaluate or export a model; nothing about it has to be repeated on a command line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from avbind.models.config import ModelConfig
from avbind.models.network import AVBindNet

FORMAT_VERSION = 1  # bump when the layout of the saved dict changes


def save_checkpoint(
    path: str | Path, model: AVBindNet, class_names: list[str] | None = None, **extra: object
) -> Path:
    """Write config, weights and names (and any extra training state) to ``path``.

    Names default to the model's own (``model.class_names`` etc.).
    """
    n_classes = model.config.heads.num_classes
    class_names = class_names if class_names is not None else model.class_names
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"class_names: expected {n_classes} names, got {len(class_names)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "class_names": list(class_names) if class_names is not None else None,
        "verb_names": model.verb_names,
        "noun_names": model.noun_names,
        "state_dict": model.state_dict(),
        **extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written checkpoint
    return path


def load_checkpoint(path: str | Path) -> dict:
    """The raw saved dict (for resuming training); raises with the path on a bad file."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several types for truncated or foreign files
        # torch's own text (about weights_only) runs to a paragraph and misleads: -v shows it.
        raise ValueError(f"{path}: not a readable avbind checkpoint (truncated, corrupt or not a PyTorch file: "
                         f"{type(err).__name__})") from err
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise ValueError(f"{path}: not an avbind checkpoint (no config/state_dict inside)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {payload.get('format_version')}, this avbind reads {FORMAT_VERSION}"
        )
    return payload


def load_model(path: str | Path) -> AVBindNet:
    """Rebuild the model a checkpoint describes, in eval mode."""
    payload = load_checkpoint(path)
    try:
        model = AVBindNet(ModelConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, ValueError, RuntimeError) as err:  # a foreign or edited file
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: its weights do not fit its configuration ({type(err).__name__}: {first})") from err
    model.class_names = payload.get("class_names")
    model.verb_names = payload.get("verb_names")
    model.noun_names = payload.get("noun_names")
    return model.eval()
