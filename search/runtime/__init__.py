"""Running an exported model: the one ONNX Runtime session factory (``runtime.sessions``:
devices ``auto``/``cpu``/``cuda``/``tensorrt``, provider order TensorRT -> CUDA -> CPU, pinned
intra-op threads, graph and TensorRT options) and the one latency timer (``runtime.timing``:
warm-up, repeats under a time cap, median/p90/p99 by one percentile rule). The search,
``serve``, the app and the benchmarks all make sessions and time models through it.

May import: ``search.core``, numpy, onnxruntime (imported when a session is made). Torch-free.
"""
