"""search.runtime: the one session factory and the one timer, and that every caller uses them."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from search.core.errors import NasdeployError
from search.runtime import sessions, timing
from search.runtime.sessions import CPU, CUDA, TENSORRT, SessionSettings, create_session, select_providers
from search.runtime.timing import measure, summarize

ROOT = Path(__file__).resolve().parents[1]
GPU_HERE = bool({CUDA, TENSORRT} & set(ort.get_available_providers()))


class FakeClock:
    """A clock (seconds) that moves only when told to, in steps of 1/1024 s (exact floats)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ticks: int) -> None:
        self.now += ticks / 1024


def tick_ms(ticks: int) -> float:
    """What :func:`measure` reports for a run that took ``ticks`` clock steps (exact)."""
    return ticks * 1000 / 1024


def gemm_model(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """``y = x @ w + b``, dynamic batch, 4 inputs -> 3 outputs, built with onnx.helper."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["logits"])], "gemm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path, w, b


# --- statistics -------------------------------------------------------------------------

def test_summarize_known_values_with_linear_percentiles() -> None:
    stats = summarize([7.0, 1.0, 10.0, 3.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0])
    assert stats.count == 10
    assert stats.median_ms == 5.5 and stats.mean_ms == 5.5
    assert stats.p90_ms == pytest.approx(9.1, abs=1e-12)
    assert stats.p99_ms == pytest.approx(9.91, abs=1e-12)
    assert (stats.min_ms, stats.max_ms) == (1.0, 10.0)
    assert stats.std_ms == pytest.approx(math.sqrt(8.25), abs=1e-12)  # population std
    odd = summarize([3.0, 1.0, 2.0])
    assert odd.median_ms == 2.0 and odd.p90_ms == pytest.approx(2.8, abs=1e-12)
    single = summarize([4.0])
    assert single.median_ms == single.p99_ms == single.min_ms == 4.0 and single.std_ms == 0.0
    with pytest.raises(ValueError):
        summarize([])


# --- the timer ----------------------------------------------------------------------------

def test_warmups_run_but_are_not_counted() -> None:
    clock, calls = FakeClock(), []

    def run() -> None:
        calls.append(1)
        clock.advance(1000 if len(calls) <= 4 else 2)  # warm-ups are slow, timed runs fast

    result = measure(run, warmup=4, repeats=6, clock=clock, threads=2, provider=CPU, batch_size=1)
    assert len(calls) == 10 and result.warmup_runs == 4
    assert result.samples_ms == (tick_ms(2),) * 6 and result.stats.max_ms == tick_ms(2)
    assert not result.stopped_by_time
    assert (result.threads, result.provider, result.batch_size) == (2, CPU, 1)
    assert result.throughput_ips == pytest.approx(1000 / tick_ms(2))
    assert result.to_dict()["samples_ms"] == [tick_ms(2)] * 6


def test_time_cap_stops_warmup_at_half_and_timing_after_min_repeats() -> None:
    clock = FakeClock()
    slow = lambda: clock.advance(256)  # noqa: E731 - each run: 0.25 s
    result = measure(slow, warmup=100, repeats=1000, min_repeats=3, max_time_s=0.5, clock=clock)
    assert result.warmup_runs == 1  # 0.25 s >= half of 0.5 s
    assert len(result.samples_ms) == 3 and result.stopped_by_time  # min_repeats, then the cap
    longer = measure(slow, warmup=0, repeats=1000, min_repeats=1, max_time_s=1.0, clock=clock)
    assert len(longer.samples_ms) == 4  # 4 x 0.25 s reaches the 1 s cap
    zero = measure(slow, warmup=5, repeats=2, min_repeats=3, max_time_s=0.0, clock=clock)
    assert len(zero.samples_ms) == 2 and not zero.stopped_by_time  # never fewer than repeats <= min
    open_ended = measure(slow, warmup=0, repeats=None, min_repeats=5, max_time_s=0.5, clock=clock)
    assert len(open_ended.samples_ms) == 5


def test_time_cap_caps_a_really_slow_callable() -> None:
    began = time.perf_counter()
    result = measure(lambda: time.sleep(0.02), warmup=50, repeats=10_000, max_time_s=0.2)
    assert 3 <= len(result.samples_ms) < 30 and result.stopped_by_time
    assert result.warmup_runs < 50
    assert time.perf_counter() - began < 2.0
    assert all(t >= 15.0 for t in result.samples_ms)


def test_impossible_timing_settings_are_rejected() -> None:
    for kwargs in ({"warmup": -1}, {"repeats": 0}, {"min_repeats": 0}, {"repeats": None}):
        with pytest.raises(NasdeployError):
            measure(lambda: None, **kwargs)


# --- providers and sessions ---------------------------------------------------------------

EVERYTHING = ["AzureExecutionProvider", CPU, CUDA, TENSORRT]


def test_provider_order_is_a_function_of_the_available_list() -> None:
    assert select_providers("auto", EVERYTHING) == [TENSORRT, CUDA, CPU]
    assert select_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("auto", ["AzureExecutionProvider", CPU]) == [CPU]
    assert select_providers("auto", []) == [CPU]
    assert select_providers("cpu", EVERYTHING) == [CPU]
    assert select_providers("cuda", EVERYTHING) == [CUDA, CPU]
    assert select_providers("tensorrt", EVERYTHING) == [TENSORRT, CUDA, CPU]
    assert select_providers("tensorrt", [TENSORRT, CPU]) == [TENSORRT, CPU]
    for device, available in (("cuda", [TENSORRT, CPU]), ("tensorrt", [CUDA, CPU])):
        with pytest.raises(NasdeployError, match="onnxruntime-gpu instead of onnxruntime"):
            select_providers(device, available)
    with pytest.raises(NasdeployError, match="unknown ONNX Runtime device"):
        select_providers("gpu", EVERYTHING)
    with pytest.raises(NasdeployError, match="unknown ONNX Runtime device"):
        SessionSettings(device="gpu")


def test_tensorrt_provider_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sessions.TRT_CACHE_ENV, str(tmp_path / "env"))
    assert sessions.provider_options(CPU) == {} and sessions.provider_options(CUDA) == {}
    assert sessions.provider_options(TENSORRT) == {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "env")}
    fp16 = sessions.provider_options(TENSORRT, SessionSettings(trt_fp16=True, trt_cache_dir=tmp_path))
    assert fp16["trt_fp16_enable"] == "True" and fp16["trt_engine_cache_path"] == str(tmp_path)


def test_cpu_session_runs_a_real_model_with_pinned_threads(tmp_path: Path) -> None:
    path, w, b = gemm_model(tmp_path / "gemm.onnx")
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    session = create_session(path, SessionSettings(device="cpu", threads=1))
    assert session.get_providers() == [CPU]
    assert session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(session.run(None, {"input": x})[0], x @ w + b, rtol=1e-5, atol=1e-5)
    default = create_session(path.read_bytes(), SessionSettings(device="auto"))
    assert default.get_session_options().intra_op_num_threads == sessions.default_threads() >= 1
    assert sessions.session_provider(default) in ort.get_available_providers()


@pytest.mark.skipif(GPU_HERE, reason="needs an ONNX Runtime without GPU providers")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_request_without_gpu_provider_fails_with_one_line(tmp_path: Path, device: str) -> None:
    path, _, _ = gemm_model(tmp_path / "gemm.onnx")
    with pytest.raises(NasdeployError) as info:
        create_session(path, SessionSettings(device=device))
    message = str(info.value)
    assert "\n" not in message and "onnxruntime-gpu" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message


def test_both_onnxruntime_packages_installed_is_one_clear_line() -> None:
    problem = sessions.install_problem(["onnxruntime", "onnxruntime-gpu"])
    assert problem is not None and "\n" not in problem
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in problem
    assert sessions.install_problem(["onnxruntime-gpu"]) is None
    assert "onnxruntime" in sessions.installed_distributions()  # read from real package metadata


def test_importing_the_runtime_loads_neither_torch_nor_onnxruntime() -> None:
    code = ("import search.runtime.sessions, search.runtime.timing, sys; "
            "assert 'torch' not in sys.modules, 'torch'; assert 'onnxruntime' not in sys.modules, 'ort'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


# --- every caller reports through the one timer ---------------------------------------------

WARMUP_TICKS = [300, 300]
TIMED_TICKS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]


class ClockedSession:
    """A real ONNX Runtime session whose every ``run`` also moves a fake clock by a script."""

    def __init__(self, session: Any, clock: FakeClock, ticks: list[int]) -> None:
        self._session, self._clock, self._ticks = session, clock, iter(ticks)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        out = self._session.run(*args, **kwargs)
        self._clock.advance(next(self._ticks))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def test_search_serve_and_app_report_the_same_numbers_for_the_same_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_fixtures import make_onnx_classifier

    from app import models
    from search.evaluation import latency
    from search.space.genotype import REFERENCE_GENOTYPES
    from serve import bench
    from serve.runtime import load_runtime

    clock = FakeClock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=clock))
    samples = [tick_ms(t) for t in TIMED_TICKS]
    want = summarize(samples)
    assert want.p90_ms != statistics.quantiles(samples, n=10)[-1]  # the rules really differ here

    real_create = sessions.create_session  # the meter's sessions come from the one factory
    settings = latency.LatencySettings(scale="1@48", image_size=16, warmup=2, repeats=10, threads=1,
                                       max_time_s=60.0, retries=0)  # one scripted pass, no re-measure
    with monkeypatch.context() as patch:  # only the meter's session runs on the scripted clock
        patch.setattr(sessions, "create_session", lambda path, settings: ClockedSession(
            real_create(path, settings), clock, WARMUP_TICKS + TIMED_TICKS))
        cost = latency.LatencyMeter(settings)(REFERENCE_GENOTYPES["lite"])
    assert (cost.latency_ms, cost.latency_p90_ms, cost.timed_runs) == (want.median_ms, want.p90_ms, 10)
    assert cost.threads == 1 and cost.provider == CPU

    model = make_onnx_classifier(tmp_path / "tiny.onnx")
    runtime = load_runtime(model, device="cpu")
    runtime.session = ClockedSession(runtime.session, clock, WARMUP_TICKS + TIMED_TICKS)
    row = bench.bench_batch(runtime, 1, bench.BenchConfig(model, warmup=2, iters=10),
                            np.random.default_rng(0))
    assert (row["iters"], row["p50_ms"], row["p90_ms"], row["p99_ms"]) == (
        10, want.median_ms, want.p90_ms, want.p99_ms)
    assert (row["mean_ms"], row["min_ms"], row["max_ms"]) == (want.mean_ms, want.min_ms, want.max_ms)
    assert runtime.describe()["intra_op_threads"] == sessions.default_threads()

    runtime.session = ClockedSession(runtime.session._session, clock, TIMED_TICKS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # streamlit's "no script run context" outside `streamlit run`
        shown = models.measure_latency(runtime, runs=10)
    assert shown.stats == want and shown.provider == CPU
    assert shown.threads == sessions.default_threads()
