"""Export of the step model to ONNX and TensorRT, and quantization."""
