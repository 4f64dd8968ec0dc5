"""The shipped, trained default model: a checkpoint for torch and an ONNX file for the core install.

Torch-free, so the runtime can find the ONNX file without a training install.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_NAME = "avbind-s"


def shipped(suffix: str, name: str = DEFAULT_NAME) -> Path:
    """Path of the shipped ``name`` model with ``suffix`` (".pt" or ".onnx"); raises if absent."""
    path = Path(str(files(__name__).joinpath(f"{name}{suffix}")))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the shipped {name}{suffix} is missing from this installation; "
            "train one with `avbind train` and pass it explicitly"
        )
    return path


def default_checkpoint() -> Path:
    return shipped(".pt")


def default_onnx() -> Path:
    return shipped(".onnx")
