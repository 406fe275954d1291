"""Running an exported model: the one ONNX Runtime session factory (provider order
TensorRT -> CUDA -> CPU) and the one latency timer (warm-up, repeats, median, p90, p99).
The search, ``serve``, the app and the benchmarks all time models through it.

May import: ``search.core``, numpy, onnxruntime (imported when a session is made). Torch-free.
"""
