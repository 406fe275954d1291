"""The latency meter: real ONNX export and ONNX Runtime timing of tiny networks, and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from search.core.errors import MeasurementError, NasdeployError
from search.evaluation.latency import LatencyMeter, LatencySettings, time_onnx
from search.nn.cost import count_macs, count_params
from search.nn.model import build_model
from search.nn.onnxio import export_onnx
from search.space.genotype import REFERENCE_GENOTYPES, Block, Cell, Genotype

LITE = REFERENCE_GENOTYPES["lite"]
NASNET = REFERENCE_GENOTYPES["nasnet-a"]
TINY = LatencySettings(scale="1@48", image_size=16, warmup=1, repeats=3, threads=1)


def test_meter_measures_positive_costs_matching_the_model(tmp_path: Path) -> None:
    meter = LatencyMeter(TINY, tmp_path / "latency.jsonl")
    cost = meter(LITE)
    assert cost.latency_ms > 0 and cost.latency_p90_ms >= cost.latency_ms
    assert cost.measure_time_s > 0
    assert cost.provider == "CPUExecutionProvider"
    model = build_model(LITE, "1@48", num_classes=10, image_size=16)
    assert cost.macs == count_macs(model, 16) and cost.params == count_params(model)
    bigger = meter(NASNET)
    assert bigger.macs != cost.macs and meter.measurements == 2


def test_meter_caches_in_memory_and_on_disk(tmp_path: Path) -> None:
    cache = tmp_path / "latency.jsonl"
    meter = LatencyMeter(TINY, cache)
    first = meter(LITE)
    assert meter(LITE) is first and meter.measurements == 1
    # equal genotypes (not the same object) share the entry
    assert meter(Genotype.from_dict(json.loads(LITE.to_json()))) is first
    with open(cache, "a", encoding="utf-8") as handle:
        handle.write('{"genotype": "cut short by a ki')  # a line interrupted by a kill
    resumed = LatencyMeter(TINY, cache)
    assert resumed(LITE) == first and resumed.measurements == 0 and len(resumed) == 1
    other_settings = LatencyMeter(LatencySettings(scale="1@48", image_size=12, warmup=0,
                                                  repeats=1, threads=1), cache)
    assert len(other_settings) == 0  # entries measured under other settings are not reused
    assert other_settings(LITE).macs < first.macs and other_settings.measurements == 1


def test_candidate_that_cannot_be_built_raises_measurement_error() -> None:
    broken = Genotype(normal=Cell((Block((0, 1), ("no_such_op", "identity"), "add"),)),
                      reduce=LITE.reduce)
    with pytest.raises(MeasurementError) as info:
        LatencyMeter(TINY)(broken)
    assert "\n" not in str(info.value)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="needs ONNX Runtime without CUDA")
def test_cuda_latency_without_provider_is_one_line_error() -> None:
    with pytest.raises(NasdeployError, match="onnxruntime-gpu") as info:
        LatencyMeter(LatencySettings(scale="1@48", image_size=16, device="cuda"))
    assert "\n" not in str(info.value)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(NasdeployError):
        LatencySettings(repeats=0)
    with pytest.raises(NasdeployError, match="variant"):
        LatencyMeter(LatencySettings(scale="huge"))


def test_timing_is_capped_for_slow_candidates_and_full_otherwise(tmp_path: Path) -> None:
    model = build_model(LITE, "1@48", num_classes=10, image_size=16)
    path = export_onnx(model, tmp_path / "lite.onnx", 16, dynamic_batch=False)
    capped = time_onnx(path, 16, warmup=5, repeats=50, threads=1, max_time_s=0.0)
    assert len(capped.samples_ms) == 3 and capped.warmup_runs == 1 and capped.stopped_by_time
    assert capped.provider == "CPUExecutionProvider" and capped.threads == 1
    full = time_onnx(path, 16, warmup=1, repeats=7, threads=1, max_time_s=None)
    assert len(full.samples_ms) == 7 and all(t > 0 for t in full.samples_ms)
    assert not full.stopped_by_time
    cost = LatencyMeter(LatencySettings(scale="1@48", image_size=16, warmup=0, repeats=4,
                                        threads=1))(LITE)
    assert cost.timed_runs == 4 and cost.threads == 1


# --- measurement you can repeat ---------------------------------------------------------------


def test_one_pinned_thread_is_the_default_and_the_flag_reaches_the_session(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from search.evaluation.latency import DEFAULT_THREADS
    from search.experiment.session import SearchConfig, _settings
    from search.run import build_parser

    assert LatencySettings().threads == DEFAULT_THREADS == 1 == SearchConfig("5ms").latency_threads
    given = build_parser().parse_args(["--latency-budget", "5ms", "--latency-threads", "2"])
    config = SearchConfig(**{k: v for k, v in vars(given).items() if v is not None and k != "json"})
    data = SimpleNamespace(image_size=16, num_classes=10)
    _, settings = _settings(config, data)
    assert settings.threads == 2
    # a run written before --latency-threads timed on every core and keeps doing so on resume
    old = SearchConfig.from_dict({"latency_budget": "5ms", "latency_device": "cpu"})
    assert old.latency_threads is None and _settings(old, data)[1].threads is None
    with pytest.raises(NasdeployError, match="--latency-threads must be at least 1"):
        SearchConfig("5ms", latency_threads=0).validate()
    two = LatencyMeter(LatencySettings(scale="1@48", image_size=16, warmup=1, repeats=3, threads=2))(LITE)
    assert two.threads == 2 and two.provider == "CPUExecutionProvider"


def test_cost_and_trial_record_carry_median_and_p10_p90(tmp_path: Path) -> None:
    from search.evaluation.reward import RewardConfig
    from search.experiment.loop import Evaluator, evaluate_candidate
    from search.trials.history import TrialRecord

    meter = LatencyMeter(LatencySettings(scale="1@48", image_size=16, warmup=1, repeats=9, threads=1))
    cost = meter(LITE)
    assert cost.latency_p10_ms <= cost.latency_ms <= cost.latency_p90_ms
    assert cost.timed_runs == 9 and 1 <= cost.attempts <= 2 and cost.precision == "fp32"

    class Trained:
        accuracy, status, error, train_time_s = 0.5, "ok", None, 0.1

    record = evaluate_candidate(LITE, Evaluator(lambda g: Trained(), meter, RewardConfig(5.0)), 0, "random")
    assert (record.latency_ms, record.latency_p10_ms, record.latency_p90_ms) == (
        cost.latency_ms, cost.latency_p10_ms, cost.latency_p90_ms)
    line = json.loads(json.dumps(record.to_dict()))
    assert TrialRecord.from_dict(line).latency_p90_ms == cost.latency_p90_ms
    old = {k: v for k, v in line.items() if not k.startswith("latency_p")}
    assert TrialRecord.from_dict(old).latency_p10_ms is None  # records written before the spread


class ScriptedClock:
    """A clock that a scripted callable moves by given milliseconds per run."""

    def __init__(self, runs_ms: list[float]) -> None:
        self.now, self.runs = 0.0, iter(runs_ms)

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.now += next(self.runs) / 1000.0


@pytest.mark.parametrize("passes, attempts, kept", [
    ([[10] * 10], 1, 0),                                 # narrow first pass: kept, no re-measure
    ([[10, 30] * 5, [10] * 9 + [11]], 2, 1),             # wide, then narrow: the narrow one
    ([[10, 30] * 5, [10, 20] * 5], 2, 1),                # both wide: the narrower, no third pass
    ([[10, 20] * 5, [10, 40] * 5], 2, 0),                # a wider second pass does not replace
])
def test_a_wide_spread_is_measured_again_and_the_narrower_pass_kept(passes, attempts, kept) -> None:
    from search.runtime.repeatable import measure_repeatable

    clock = ScriptedClock([ms for p in passes for ms in p])
    got = measure_repeatable(clock.run, warmup=0, repeats=10, max_time_s=None, spread_limit=0.25,
                             retries=1, clock=clock)
    assert got.attempts == attempts
    assert list(got.measurement.samples_ms) == pytest.approx(passes[kept])
    assert got.p10_ms <= got.median_ms <= got.p90_ms
    assert got.spread == pytest.approx((got.p90_ms - got.p10_ms) / got.median_ms)


def test_cache_key_names_everything_that_changes_the_number() -> None:
    import importlib.metadata

    from search.evaluation.latency import measurement_key
    from search.runtime.host import cpu_model

    key = measurement_key(TINY, 16)
    assert key["versions"]["onnxruntime"] == ort.__version__
    assert key["versions"]["torch"] == __import__("torch").__version__
    assert key["versions"]["onnxslim"] == importlib.metadata.version("onnxslim")
    assert key["cpu"] == cpu_model() != "" and key["provider"] == "CPUExecutionProvider"
    assert (key["threads"], key["precision"], key["batch"]) == (1, "fp32", 1)
    assert (key["warmup"], key["repeats"]) == (1, 3)
    assert (key["target_variant"], key["image_size"], key["num_classes"]) == ("1@48", 16, 10)
    # threads left to ONNX Runtime are recorded as the count that actually runs
    from search.runtime.sessions import default_threads

    assert measurement_key(LatencySettings(scale="1@48", threads=None), 16)["threads"] == default_threads()
    for change in ({"threads": 2}, {"warmup": 2}, {"repeats": 4}, {"num_classes": 5}, {"scale": "2@48"},
                   {"max_time_s": 1.0}):
        assert measurement_key(LatencySettings(**{**TINY.__dict__, **change}), 16) != key, change


def test_cache_lines_without_the_full_key_are_not_reused(tmp_path: Path) -> None:
    cache = tmp_path / "latency_cache.jsonl"
    meter = LatencyMeter(TINY, cache)
    first = meter(LITE)
    entry = json.loads(cache.read_text())
    assert entry["settings"] == meter.key
    # a line of the old, incomplete key (scale, size, classes, device, threads, repeats)
    old_key = {"scale": "1@48", "image_size": 16, "num_classes": 10, "device": "cpu", "threads": 1,
               "repeats": 3}
    stale = {**entry, "genotype": NASNET.to_json(), "settings": old_key,
             "cost": {**entry["cost"], "latency_ms": 123.0}}
    other_version = {**entry, "genotype": NASNET.to_json(),
                     "settings": {**meter.key, "versions": {**meter.key["versions"], "onnxruntime": "0.1"}}}
    with open(cache, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(stale) + "\n" + json.dumps(other_version) + "\n")
    resumed = LatencyMeter(TINY, cache)
    assert len(resumed) == 1 and resumed(LITE) == first and resumed.measurements == 0
    assert resumed(NASNET).latency_ms != 123.0 and resumed.measurements == 1
    assert LatencyMeter(LatencySettings(**{**TINY.__dict__, "threads": 2}), cache).__len__() == 0


# --- TensorRT as a latency device ---------------------------------------------------------------


def _trt_missing() -> str | None:
    from search.runtime.tensorrt import missing_requirement

    return missing_requirement()


@pytest.mark.skipif(_trt_missing() is None, reason="TensorRT and a GPU are present")
def test_tensorrt_latency_without_tensorrt_is_one_line_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(NasdeployError, match="TensorRT latency needs") as info:
        LatencyMeter(LatencySettings(scale="1@48", image_size=16, device="tensorrt"))
    assert "\n" not in str(info.value) and "nasdeploy[gpu]" in str(info.value)
    from search.run import main

    out = tmp_path / "run"
    code = main(["--latency-budget", "5ms", "--latency-device", "tensorrt", "--dataset", "digits",
                 "--target-variant", "1@48", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: TensorRT latency needs") and err.count("\n") == 1
    assert not out.exists()


def test_tensorrt_settings_are_fp16_and_other_devices_are_refused() -> None:
    from search.experiment.session import SearchConfig

    assert LatencySettings(device="tensorrt").precision == "fp16" and TINY.precision == "fp32"
    SearchConfig("5ms", latency_device="tensorrt").validate()
    with pytest.raises(NasdeployError, match="cpu, cuda or tensorrt"):
        SearchConfig("5ms", latency_device="tpu").validate()
    with pytest.raises(NasdeployError, match="unknown latency device"):
        LatencySettings(device="tpu")


def test_fp16_model_for_tensorrt_is_half_precision_and_agrees_with_fp32(tmp_path: Path) -> None:
    import numpy as np
    import onnx

    from search.runtime.sessions import SessionSettings, create_session
    from search.runtime.tensorrt import convert_fp16

    model = build_model(LITE, "1@48", num_classes=10, image_size=16)
    fp32 = export_onnx(model, tmp_path / "lite.onnx", 16, dynamic_batch=False)
    fp16 = convert_fp16(fp32, tmp_path / "lite.fp16.onnx")
    graph = onnx.load(str(fp16)).graph
    onnx.checker.check_model(str(fp16))
    weights = [i for i in graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    cpu = SessionSettings(device="cpu", threads=1)
    want = create_session(fp32, cpu).run(None, {"input": x})[0]
    got = create_session(fp16, cpu).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and np.abs(got - want).max() < 2e-2 * max(1.0, np.abs(want).max())


def test_tensorrt_timing_cache_is_kept_beside_the_latency_cache(tmp_path: Path) -> None:
    from search.runtime.tensorrt import TimingCache

    path = tmp_path / "latency_cache.tensorrt-timing"
    cache = TimingCache(path)
    assert cache.data == b"" and not path.exists()
    cache.update(b"kernel timings")
    cache.update(b"")  # a build that returned nothing keeps the old cache
    assert path.read_bytes() == b"kernel timings" and TimingCache(path).data == b"kernel timings"


@pytest.mark.skipif(_trt_missing() is not None, reason="needs TensorRT and an NVIDIA GPU")
def test_tensorrt_latency_builds_fp16_engines_with_a_shared_timing_cache(tmp_path: Path) -> None:
    meter = LatencyMeter(LatencySettings(scale="1@48", image_size=16, device="tensorrt", warmup=2,
                                         repeats=10), tmp_path / "latency_cache.jsonl")
    first, second = meter(LITE), meter(NASNET)
    assert first.provider == "TensorRT" and first.precision == "fp16" and first.threads is None
    assert 0 < first.latency_p10_ms <= first.latency_ms <= first.latency_p90_ms and second.latency_ms > 0
    assert (tmp_path / "latency_cache.tensorrt-timing").stat().st_size > 0
