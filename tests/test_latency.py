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
TINY = LatencySettings(scale="1@16", image_size=16, warmup=1, repeats=3, threads=1)


def test_meter_measures_positive_costs_matching_the_model(tmp_path: Path) -> None:
    meter = LatencyMeter(TINY, tmp_path / "latency.jsonl")
    cost = meter(LITE)
    assert cost.latency_ms > 0 and cost.latency_p90_ms >= cost.latency_ms
    assert cost.measure_time_s > 0
    assert cost.provider == "CPUExecutionProvider"
    model = build_model(LITE, "1@16", num_classes=10, image_size=16)
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
    other_settings = LatencyMeter(LatencySettings(scale="1@16", image_size=12, warmup=0,
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
        LatencyMeter(LatencySettings(scale="1@16", image_size=16, device="cuda"))
    assert "\n" not in str(info.value)


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(NasdeployError):
        LatencySettings(repeats=0)
    with pytest.raises(NasdeployError, match="variant"):
        LatencyMeter(LatencySettings(scale="huge"))


def test_timing_is_capped_for_slow_candidates_and_full_otherwise(tmp_path: Path) -> None:
    model = build_model(LITE, "1@16", num_classes=10, image_size=16)
    path = export_onnx(model, tmp_path / "lite.onnx", 16, dynamic_batch=False)
    capped = time_onnx(path, 16, warmup=5, repeats=50, threads=1, max_time_s=0.0)
    assert len(capped.samples_ms) == 3 and capped.warmup_runs == 1 and capped.stopped_by_time
    assert capped.provider == "CPUExecutionProvider" and capped.threads == 1
    full = time_onnx(path, 16, warmup=1, repeats=7, threads=1, max_time_s=None)
    assert len(full.samples_ms) == 7 and all(t > 0 for t in full.samples_ms)
    assert not full.stopped_by_time
    cost = LatencyMeter(LatencySettings(scale="1@16", image_size=16, warmup=0, repeats=4,
                                        threads=1))(LITE)
    assert cost.timed_runs == 4 and cost.threads == 1
