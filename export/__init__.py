"""nasdeploy export: ONNX, quantisation and TensorRT engines."""
