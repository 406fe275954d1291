"""Running an exported model: the one ONNX Runtime session factory (``runtime.sessions``:
devices ``auto``/``cpu``/``cuda``/``tensorrt``, provider order TensorRT -> CUDA -> CPU, pinned
intra-op threads, graph and TensorRT options) and the one latency timer (``runtime.timing``:
warm-up, repeats under a time cap, median/p90/p99 by one percentile rule). The search,
``serve``, the app and the benchmarks all make sessions and time models through it.
``runtime.repeatable`` adds the re-measure rule (median, p10/p90, time again when the spread
is wide), ``runtime.host`` the CPU model and package versions a latency depends on,
``runtime.panel`` the latency-panel formats and their timing on the target, and
``runtime.tensorrt`` fp16 TensorRT engines as a latency device.

May import: ``search.core``, numpy, onnxruntime (imported when a session is made), tensorrt and
cuda-python (imported when an engine is built). Torch-free.
"""
