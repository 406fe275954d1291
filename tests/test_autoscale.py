"""Automatic N@F (``python -m search.scale``): the choice rule, the sweep on real timings, the
record in the genotype file that ``search.train --variant auto`` builds, baselines and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.evaluation.autoscale import NASNET_RATIOS, ScalePoint, choose, filter_steps
from search.evaluation.predictor import fit_predictor, load_measurements, save_predictor
from search.scale import main
from search.space.genotype import REFERENCE_GENOTYPES, load_genotype_file, save_genotype


def _point(n: int, f: int, macs: float, feasible: bool = True) -> ScalePoint:
    return ScalePoint(f"{n}@{f}", 1.0, int(macs), 1000, feasible, "measured", num_cells=n, filters=f)


def test_choose_takes_the_most_macs_within_the_budget() -> None:
    points = [_point(1, 96, 5e6), _point(2, 96, 8e6), _point(3, 96, 20e6, feasible=False)]
    assert choose(points).scale == "2@96"
    assert choose([_point(1, 48, 1e6, feasible=False)]) is None
    assert choose([]) is None


def test_among_near_equals_nasnets_ratio_wins() -> None:
    # 6@768 is NASNet-A's CIFAR ratio (128); 1@1008 is far wider than any NASNet network.
    deep, wide = _point(6, 768, 95e6), _point(1, 1008, 100e6)
    assert NASNET_RATIOS["cifar"][0] <= deep.ratio <= NASNET_RATIOS["cifar"][1]
    assert choose([deep, wide]) is deep
    assert choose([deep, wide], near=0.01) is wide  # not a near-equal: the larger wins
    assert choose([_point(6, 768, 50e6), wide]) is wide


def test_filter_steps_cover_small_widths_one_by_one_and_large_ones_sparsely() -> None:
    steps = filter_steps(2, 168)
    assert steps[:15] == list(range(2, 17)) and steps[-1] <= 168
    assert all(b > a for a, b in zip(steps, steps[1:], strict=False))
    assert len(steps) < 45 and all((b - a) <= max(1, a // 8) for a, b in zip(steps, steps[1:], strict=False))


def test_scales_a_genotype_records_it_and_train_reads_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cell.json"
    save_genotype(REFERENCE_GENOTYPES["nasnet-a"], out, {"note": "kept"})
    code = main([str(out), "--latency-budget", "2s", "--cells", "2", "--max-filters", "72",
                 "--image-size", "16", "--json", str(tmp_path / "grid.json")])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "chosen: 2@72" in text and "--variant auto" in text
    genotype, metadata = load_genotype_file(out)
    assert genotype == REFERENCE_GENOTYPES["nasnet-a"] and metadata["note"] == "kept"
    scale = metadata["scale"]
    assert (scale["variant"], scale["image_size"], scale["budget_ms"]) == ("2@72", 16, 2000.0)
    assert {p["scale"] for p in scale["grid"]} == {"2@48", "2@72"}
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert all(p["latency_ms"] > 0 and p["feasible"] for p in grid["points"])
    assert grid["chosen"]["macs"] == max(p["macs"] for p in grid["points"])
    assert all((p["num_cells"], p["filters"]) != (None, None) for p in grid["points"])

    from search.train import build_parser, settings_from_args
    from search.trials.runinfo import resolve_run

    args = build_parser().parse_args([str(out), "--variant", "auto"])
    settings = settings_from_args(args, resolve_run(str(out)))
    assert (settings.variant, settings.image_size) == ("2@72", 16)


def test_the_sweep_stops_where_models_get_too_slow(tmp_path: Path, capsys) -> None:
    # Every point but the narrowest of each N misses 1 us by far: one point per N is measured
    # and nothing is written.
    target = tmp_path / "nasnet.json"
    assert main(["nasnet-a", "--latency-budget", "1us", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no scale of nasnet-a meets 0.001 ms: the smallest tried, 1@48, takes" in err[0]
    assert not target.exists()


def _predictor(tmp_path: Path) -> Path:
    from search.space.scale import parse_scale
    from tests.test_predictor import _measurements, _per_op_latency, _random

    genotypes = _random(40, seed=3)
    latencies = _per_op_latency(genotypes, parse_scale("2@192", 16))
    predictor = fit_predictor(load_measurements(_measurements(tmp_path / "m.json", genotypes, latencies)))
    return save_predictor(predictor, tmp_path / "p.json")


def test_a_predictor_marks_other_scales_as_extrapolated(tmp_path: Path, capsys) -> None:
    out = tmp_path / "nasnet.json"
    code = main(["nasnet-a", "--latency-budget", "1s", "--latency-predictor", str(_predictor(tmp_path)),
                 "--image-size", "16", "--cells", "2", "--max-filters", "240", "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    sources = {p["scale"]: p["source"] for p in report["points"]}
    assert sources["2@192"] == "predicted" and sources["2@48"] == "extrapolated"
    assert load_genotype_file(out)[1]["scale"]["variant"] == report["chosen"]["scale"]


def test_a_baseline_without_a_width_is_measured_once(capsys) -> None:
    assert main(["--model", "lenet5", "--latency-budget", "1s", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["scale"] for p in report["points"]] == ["x1"] and report["chosen"]["width_mult"] is None
    assert report["train_command"] == "python -m search.train --model lenet5"


def test_a_baseline_width_is_swept_until_too_slow(capsys) -> None:
    # 20 us is under even MobileNetV2 x0.1: the sweep measures the narrowest, finds it more than
    # three times over and stops, naming its latency.
    assert main(["--model", "mobilenet_v2", "--latency-budget", "20us"]) == 2
    err = capsys.readouterr().err
    assert "no scale of mobilenet_v2 meets 0.02 ms: the smallest tried, x0.1, takes" in err


@pytest.mark.parametrize(("args", "message"), [
    (["nasnet-a", "--latency-budget", "1ms"], "built-in genotype: give --out FILE"),
    (["--latency-budget", "1ms"], "name what to scale"),
    (["nasnet-a", "--model", "lenet5", "--latency-budget", "1ms"], "not both"),
    (["--model", "lenet5", "--latency-budget", "1ms", "--out", "x.json"], "--out does not go with --model"),
    (["--model", "nope", "--latency-budget", "1ms"], "unknown"),
    (["no-such.json", "--latency-budget", "1ms"], "not found"),
    (["nasnet-a", "--latency-budget", "1ms", "--out", "DIR"], "is a folder"),
    (["nasnet-a", "--latency-budget", "1ms", "--max-filters", "24", "--out", "x.json"], "narrowest network"),
])
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path, capsys,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.json").exists()


def test_variant_auto_without_a_recorded_scale_is_one_line(tmp_path: Path, capsys) -> None:
    from search.train import main as train

    out = tmp_path / "cell.json"
    save_genotype(REFERENCE_GENOTYPES["lite"], out)
    assert train([str(out), "--variant", "auto", "--dataset", "digits", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "has no automatic N@F yet: run python -m search.scale" in err
    assert not (tmp_path / "t").exists()
