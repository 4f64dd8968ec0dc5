"""TensorRT backend: runs a serialized engine with ``execute_async_v3`` on a CUDA stream.

The recurrent state never leaves the GPU: each state tensor has two device buffers, the step reads
one and writes the other, and the roles swap (double buffering, no host round trip). Only the
frame, the log-mel window and the mask go up, and only the head outputs come down.

Written against TensorRT 10 (named I/O tensors) and cuda-python. UNVERIFIED: TensorRT cannot be
installed where this project is developed; see the README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avbind.realtime.backends.base import Backend, BackendDescription, InputError
from avbind.realtime.backends.model_file import ModelFileError, ModelInfo

ENGINE_METADATA_SUFFIX = ".json"
NOT_INSTALLED = "TensorRT is not installed: pip install 'avbind[tensorrt]' on a machine with an NVIDIA GPU"


def _import_tensorrt() -> tuple[object, object]:
    """Import TensorRT and cuda-python, turning a missing package into one clear RuntimeError.

    ``avbind run`` shows the message and exits instead of printing an ImportError traceback.
    """
    try:
        import tensorrt as trt
    except ImportError as err:
        raise RuntimeError(f"{NOT_INSTALLED} ({err})") from err
    try:
        cudart = _cudart()
    except ImportError as err:
        raise RuntimeError(f"cuda-python is not installed, the TensorRT backend needs it: {NOT_INSTALLED}") from err
    return trt, cudart


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def tensorrt_available() -> bool:
    """TensorRT and cuda-python import and a CUDA device is visible."""
    try:
        import tensorrt  # noqa: F401

        return _check(_cudart().cudaGetDeviceCount()) > 0
    except Exception:  # ImportError, or a driver error on a machine without a GPU
        return False


def cuda_device_name(device: int = 0) -> str:
    props = _check(_cudart().cudaGetDeviceProperties(device))
    name = props.name
    return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


def read_engine_info(engine_path: str | Path) -> tuple[ModelInfo, tuple[int, int, int]]:
    """The ModelInfo and (min, opt, max) batch stored beside an engine by ``avbind export --tensorrt``."""
    meta_path = Path(str(engine_path) + ENGINE_METADATA_SUFFIX)
    if not meta_path.is_file():
        raise ModelFileError(f"{engine_path}: no metadata file {meta_path.name} beside the engine")
    try:
        metadata = json.loads(meta_path.read_text())
        batch = tuple(json.loads(metadata["avbind.engine.batch"]))
    except (ValueError, KeyError) as err:
        raise ModelFileError(f"{meta_path}: malformed engine metadata ({err})") from err
    return ModelInfo.from_metadata(metadata, Path(engine_path)), batch


@dataclass
class DeviceState:
    """State of a batch of streams, in device memory. Valid until the next step that consumes it."""

    batch: int
    current: int = 0  # which of the two buffers holds the state
    buffers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> two device pointers


class TensorRTBackend(Backend):
    def __init__(self, engine_path: str | Path, device: int = 0) -> None:
        trt, cudart = _import_tensorrt()
        if Path(engine_path).suffix == ".onnx":
            raise ModelFileError(
                f"{engine_path}: the TensorRT backend runs a built .engine file; "
                "build one with `avbind export --tensorrt`"
            )
        self._trt = trt
        self._cudart = cudart
        _check(cudart.cudaSetDevice(device))
        self.device = device
        self.info, (_, _, self.max_batch) = read_engine_info(engine_path)
        self.engine_path = Path(engine_path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise ModelFileError(f"{engine_path}: TensorRT could not deserialize the engine (other TensorRT version?)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != set(self.info.input_names) | set(self.info.output_names):
            raise ModelFileError(f"{engine_path}: engine tensors {sorted(names)} do not match its metadata")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self._allocated: list[int] = []
        # Inputs and head outputs: one device buffer each, sized for the largest batch.
        self._io = {}
        shapes = self.info.input_shapes(self.max_batch)
        for name in ("frame", "log_mel", "modality_mask"):
            self._io[name] = self._malloc(int(np.prod(shapes[name])) * 4)
        self._output_shapes: dict[str, tuple[int, ...]] = {}
        for name in self.info.outputs:
            shape = tuple(self.engine.get_tensor_shape(name))[1:]  # static apart from the batch axis
            self._output_shapes[name] = shape
            self._io[name] = self._malloc(int(np.prod(shape)) * self.max_batch * 4)

    def _malloc(self, nbytes: int) -> int:
        ptr = int(_check(self._cudart.cudaMalloc(nbytes)))
        self._allocated.append(ptr)
        return ptr

    def initial_state(self, batch: int) -> DeviceState:
        if not 1 <= batch <= self.max_batch:
            raise InputError(f"batch {batch} is outside the engine's profile 1..{self.max_batch}")
        state = DeviceState(batch)
        for spec in self.info.states:
            nbytes = int(np.prod(spec.shape)) * self.max_batch * 4
            pair = (self._malloc(nbytes), self._malloc(nbytes))
            _check(self._cudart.cudaMemsetAsync(pair[0], 0, nbytes, self.stream))
            state.buffers[spec.name] = pair
        return state

    def state_to_host(self, state: DeviceState) -> list[np.ndarray]:
        """Copy a device state down (for inspection or re-batching streams); costs a sync."""
        arrays = []
        for spec in self.info.states:
            host = np.empty((state.batch, *spec.shape), dtype=np.float32)
            src = state.buffers[spec.name][state.current]
            _check(self._cudart.cudaMemcpyAsync(
                host.ctypes.data, src, host.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream
            ))
            arrays.append(host)
        _check(self._cudart.cudaStreamSynchronize(self.stream))
        return arrays

    def step(self, inputs: dict[str, np.ndarray], state: DeviceState) -> tuple[dict[str, np.ndarray], DeviceState]:
        batch = self.check_inputs(inputs)
        if not isinstance(state, DeviceState) or state.batch != batch:
            raise InputError(f"state: expected a DeviceState for batch {batch} from initial_state(), got {state!r}")
        cudart, ctx = self._cudart, self.context
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        shapes = self.info.input_shapes(batch)
        for name in ("frame", "log_mel", "modality_mask"):
            host = np.ascontiguousarray(inputs[name])
            _check(cudart.cudaMemcpyAsync(self._io[name], host.ctypes.data, host.nbytes, h2d, self.stream))
            ctx.set_input_shape(name, shapes[name])
            ctx.set_tensor_address(name, self._io[name])
        read, write = state.current, 1 - state.current
        for spec in self.info.states:
            pair = state.buffers[spec.name]
            ctx.set_input_shape(spec.name, shapes[spec.name])
            ctx.set_tensor_address(spec.name, pair[read])
            ctx.set_tensor_address(spec.output_name, pair[write])
        for name in self.info.outputs:
            ctx.set_tensor_address(name, self._io[name])
        if not ctx.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        outputs = {}
        for name in self.info.outputs:
            host = np.empty((batch, *self._output_shapes[name]), dtype=np.float32)
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, self._io[name], host.nbytes, d2h, self.stream))
            outputs[name] = host
        _check(cudart.cudaStreamSynchronize(self.stream))
        state.current = write
        return outputs, state

    def describe(self) -> BackendDescription:
        return BackendDescription(
            "tensorrt", f"cuda:{self.device}", self.info.precision,
            f"TensorRT {self._trt.__version__}, {cuda_device_name(self.device)}, batch <= {self.max_batch}",
        )

    def close(self) -> None:
        for ptr in self._allocated:
            self._cudart.cudaFree(ptr)
        self._allocated.clear()
        if getattr(self, "stream", None) is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None
