"""Inference backends behind one interface (:class:`~avbind.realtime.backends.base.Backend`).

``create_backend`` picks one from the model file and what is installed; torch, TensorRT and
ONNX Runtime are each imported only when their backend is created.
"""

from __future__ import annotations

from pathlib import Path

from avbind.realtime.backends.base import Backend, BackendDescription, InputError
from avbind.realtime.backends.model_file import ModelFileError, ModelInfo, read_model_info

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")

__all__ = [
    "BACKENDS", "Backend", "BackendDescription", "InputError", "ModelFileError", "ModelInfo", "create_backend",
    "read_model_info",
]


def create_backend(model: str | Path, backend: str = "auto", **options: object) -> Backend:
    """Open ``model`` with the named backend.

    auto: a ``.engine`` file or (TensorRT importable with a GPU and an engine built next to the ONNX
    file) -> TensorRT; a ``.pt`` checkpoint -> torch; otherwise ONNX Runtime.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(model)
    if backend == "auto":
        if path.suffix == ".engine":
            backend = "tensorrt"
        elif path.suffix == ".pt":
            backend = "torch"
        else:
            from avbind.realtime.backends.tensorrt_backend import tensorrt_available

            engine = path.with_suffix(".engine")
            backend = "tensorrt" if tensorrt_available() and engine.is_file() else "onnxruntime"
            if backend == "tensorrt":
                path = engine
    if backend == "onnxruntime":
        from avbind.realtime.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeOptions

        return OnnxRuntimeBackend(path, OnnxRuntimeOptions(**options))
    if backend == "tensorrt":
        from avbind.realtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, **options)
    from avbind.realtime.backends.torch_backend import TorchBackend

    return TorchBackend(path, **options)
