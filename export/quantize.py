"""Static int8 quantization of the exported step model to a QDQ ONNX file.

QDQ (QuantizeLinear/DequantizeLinear pairs) is the explicit-quantization format TensorRT builds
int8 engines from, and ONNX Runtime runs it on CPU. Activations and weights are symmetric int8
(TensorRT requires symmetric scales); weights are per channel, which depthwise convolutions need.

Calibration runs the fp32 model over whole streams with its state carried, so the state inputs
are calibrated on the values they take in real use, not on zeros.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from avbind.models.config import ModelConfig
from avbind.realtime.backends.model_file import ModelInfo, read_model_info
from avbind.realtime.backends.onnxruntime_backend import OnnxRuntimeBackend

log = logging.getLogger(__name__)

StepInputs = dict[str, np.ndarray]  # "frame", "log_mel", "modality_mask" for a batch of streams


class StreamCalibrationReader(CalibrationDataReader):
    """Feeds calibration steps with the state the fp32 model reaches on each stream."""

    def __init__(self, fp32_model: str | Path, streams: Iterable[Iterable[StepInputs]]) -> None:
        self._feeds = list(self._collect(fp32_model, streams))
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    @staticmethod
    def _collect(fp32_model: str | Path, streams: Iterable[Iterable[StepInputs]]) -> Iterator[dict[str, np.ndarray]]:
        backend = OnnxRuntimeBackend(fp32_model)
        for stream in streams:
            state = None
            for inputs in stream:
                if state is None:
                    state = backend.initial_state(inputs["frame"].shape[0])
                feed = dict(inputs)
                feed.update({spec.name: array for spec, array in zip(backend.info.states, state, strict=True)})
                yield feed
                _, state = backend.step(inputs, state)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_model(
    fp32_path: str | Path, int8_path: str | Path, streams: Iterable[Iterable[StepInputs]],
    method: str = "minmax",
) -> ModelInfo:
    """Write a QDQ int8 version of ``fp32_path`` calibrated on ``streams`` (each a sequence of steps)."""
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, got {method!r}")
    info = read_model_info(fp32_path)
    reader = StreamCalibrationReader(fp32_path, streams)
    if len(reader) == 0:
        raise ValueError("calibration needs at least one step of data")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(int8_path), reader,
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    model = onnx.load(str(int8_path))
    replace(info, precision="int8").write_metadata(model)
    onnx.save(model, str(int8_path))
    log.info("quantized %s to int8 (%d calibration steps): %s", fp32_path, len(reader), int8_path)
    return read_model_info(int8_path)


def avsynth_calibration_streams(data_dir: str | Path, config: ModelConfig, clips: int = 16) -> list[list[StepInputs]]:
    """Calibration streams from the validation split of an AVE-layout folder (avsynth by default)."""
    from avbind.models.data.ave import load_ave
    from avbind.models.data.steps import prepare_dataset

    dataset = load_ave(data_dir, "val")
    videos = prepare_dataset(dataset, config, Path(data_dir) / ".avbind-cache", progress=False)[:clips]
    return [list(video.stream_steps(config)) for video in videos]
