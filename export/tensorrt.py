"""Build a TensorRT engine from an exported avbind ONNX file.

Written against the TensorRT 10 Python API (explicit-batch networks, named I/O tensors, optimisation
profiles, ``build_serialized_network``). int8 is *explicit* quantization: the ONNX file already
holds QuantizeLinear/DequantizeLinear pairs (see :mod:`avbind.export.quantize`), so no implicit
calibrator (deprecated in TensorRT 10) is involved.

UNVERIFIED: TensorRT cannot be installed on the machines this project is developed and tested on.
Everything around the engine build is tested; the build itself is not.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from avbind.realtime.backends.model_file import ModelInfo, read_model_info
from avbind.realtime.backends.tensorrt_backend import ENGINE_METADATA_SUFFIX  # model.engine -> .json

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class EngineOptions:
    precision: str = "fp16"  # fp32, fp16, or int8 (needs a QDQ ONNX file)
    min_batch: int = 1  # optimisation profile over the batch axis
    opt_batch: int = 4  # the batch size TensorRT tunes kernels for
    max_batch: int = 16
    workspace_bytes: int = 1 << 30  # scratch memory TensorRT may use while building and running

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"need 1 <= min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, "
                f"{self.max_batch}"
            )


def profile_shapes(info: ModelInfo, options: EngineOptions) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shape of every input; only the batch axis varies."""
    low, opt, high = (info.input_shapes(b) for b in (options.min_batch, options.opt_batch, options.max_batch))
    return {name: (low[name], opt[name], high[name]) for name in info.input_names}


def is_qdq_model(onnx_path: str | Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(node.op_type == "QuantizeLinear" for node in graph.node)


def engine_metadata(info: ModelInfo, options: EngineOptions, trt_version: str, device_name: str) -> dict[str, str]:
    metadata = dict(info.to_metadata())
    metadata.update({
        "avbind.precision": options.precision,
        "avbind.engine.tensorrt_version": trt_version,
        "avbind.engine.device": device_name,
        "avbind.engine.batch": json.dumps([options.min_batch, options.opt_batch, options.max_batch]),
    })
    return metadata


def build_engine(onnx_path: str | Path, engine_path: str | Path, options: EngineOptions | None = None) -> Path:
    """Parse ``onnx_path``, build a serialized engine, write it and its metadata next to it."""
    options = options or EngineOptions()
    info = read_model_info(onnx_path)  # fails early, with a clear message, on a foreign file
    if options.precision == "int8" and not is_qdq_model(onnx_path):
        raise ValueError(
            f"{onnx_path}: int8 engines are built from a QDQ (explicitly quantized) ONNX file; "
            "make one with `avbind export --int8` first"
        )
    try:
        import tensorrt as trt
    except ImportError as err:
        raise RuntimeError("TensorRT is not installed: pip install 'avbind[tensorrt]' on a machine with CUDA") from err

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers left unquantized run in fp16
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(info, options).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")

    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    from avbind.realtime.backends.tensorrt_backend import cuda_device_name

    metadata = engine_metadata(info, options, trt.__version__, cuda_device_name())
    Path(str(engine_path) + ENGINE_METADATA_SUFFIX).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    log.info("built %s TensorRT engine %s (batch %d..%d)", options.precision, engine_path,
             options.min_batch, options.max_batch)
    return engine_path
