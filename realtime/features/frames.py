"""Frame preparation shared by training and serving: square centre crop, resize, scale to [0, 1]."""

from __future__ import annotations

import cv2
import numpy as np


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: centre crop to a square, then area resize.

    A centre crop rather than a stretch keeps shapes (and motion directions) undistorted for any
    camera aspect ratio.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"frame: expected shape (height, width, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def to_model_input(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [0, 1]; the network normalises itself."""
    return np.moveaxis(frames, -1, -3).astype(np.float32) / 255.0
