"""``search.run --latency-predictor``: predicted latency in the reward, the winner measured for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.core.rundir import GENOTYPE_NAME, HISTORY_NAME
from search.evaluation.panel import PanelSpec, profile
from search.latency import main as latency_main
from search.run import main as run_main
from search.runtime.panel import MEASUREMENTS_NAME, PanelTiming
from search.trials.history import read_history

TARGET, SIZE = "1@48", 8
SEARCH = [
    "--latency-budget",
    "5ms",
    "--dataset",
    "digits",
    "--target-variant",
    TARGET,
    "--child-scale",
    "1@48",
    "--child-train-size",
    "200",
    "--image-size",
    str(SIZE),
    "--strategy",
    "random",
    "--no-progress",
]


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A predictor fitted on a real panel of this target, timed here."""
    work = tmp_path_factory.mktemp("latency")
    profile(PanelSpec(TARGET, 12, SIZE, seed=3), work / "panel", PanelTiming(repeats=10, warmup=2))
    out = work / "predictor.json"
    assert latency_main(["fit", str(work / "panel" / MEASUREMENTS_NAME), "--out", str(out)]) == 0
    return out


def test_the_search_uses_predicted_latency_and_measures_the_winner(
    predictor: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    assert run_main([*SEARCH, "--trials", "3", "--latency-predictor", str(predictor), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    records = read_history(run / HISTORY_NAME)
    assert len(records) == 3 and all(r.latency_ms and r.latency_ms > 0 for r in records if r.status == "ok")
    metadata = json.loads((run / GENOTYPE_NAME).read_text())["metadata"]
    check = metadata["search"]["latency_check"]
    assert check and check[0]["trial"] == metadata["trial"]  # the winner first
    for row in check:
        assert row["measured_ms"] > 0 and row["provider"] == "CPUExecutionProvider"
        assert row["error"] == pytest.approx((row["measured_ms"] - row["predicted_ms"]) / row["predicted_ms"])
        assert row["within_tolerance"] == (abs(row["error"]) <= 0.10)
    assert f"latency of trial {check[0]['trial']}: predicted" in out
    assert ("WARNING" in out) == (not all(row["within_tolerance"] for row in check))


def test_latency_predict_prints_a_prediction_per_genotype(predictor: Path, capsys) -> None:
    assert latency_main(["predict", "--predictor", str(predictor), "nasnet-a", "lite", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["genotype"] for row in result["predictions"]] == ["nasnet-a", "lite"]
    assert all(row["predicted_ms"] > 0 for row in result["predictions"])
    assert result["target"] == {"target_variant": TARGET, "image_size": SIZE, "num_classes": 10, "blocks": 5}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-variant", "2@48"], "was made for 1@48 at 8 px"),
        (["--image-size", "16"], "was made for 1@48 at 8 px"),
        (["--blocks", "2"], "cells of 5 blocks, not 2"),
        (["--latency-threads", "2"], "profiled with 1 thread(s), not 2"),
        (["--latency-device", "cuda"], "profiled on cpu"),
    ],
)
def test_a_predictor_for_another_target_or_device_is_refused_before_anything_is_written(
    predictor: Path, tmp_path: Path, extra: list[str], message: str, capsys
) -> None:
    argv = [
        *SEARCH,
        "--trials",
        "1",
        "--latency-predictor",
        str(predictor),
        "--out",
        str(tmp_path / "run"),
        *extra,
    ]
    assert run_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


def test_a_bad_predictor_file_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"format": "nasdeploy-latency-predictor", "version": 1}')
    assert (
        run_main([*SEARCH, "--trials", "1", "--latency-predictor", str(bad), "--out", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and not (tmp_path / "r").exists()


def test_a_predictor_from_another_device_is_not_checked_against_this_host(
    predictor: Path, tmp_path: Path, capsys
) -> None:
    data = json.loads(predictor.read_text())
    data["device"]["cpu"] = "Jetson Orin (ARM Cortex-A78AE)"
    elsewhere = tmp_path / "orin.json"
    elsewhere.write_text(json.dumps(data))
    run = tmp_path / "run"
    assert run_main([*SEARCH, "--trials", "2", "--latency-predictor", str(elsewhere), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "not measured here (the predictor was profiled on Jetson Orin" in out and "WARNING" not in out
    check = json.loads((run / GENOTYPE_NAME).read_text())["metadata"]["search"]["latency_check"]
    assert len(check) == 1 and "skipped" in check[0]


def test_the_analytic_meter_has_exact_params_and_close_macs_without_building(predictor: Path) -> None:
    from search.evaluation.latency import LatencySettings, PredictedMeter
    from search.evaluation.panel import sample_genotypes
    from search.evaluation.predictor import load_predictor
    from search.space.searchspace import SearchSpace

    settings = LatencySettings(scale=TARGET, image_size=SIZE, num_classes=10)
    exact = PredictedMeter(load_predictor(predictor), settings, 5)
    fast = PredictedMeter(load_predictor(predictor), settings, 5, exact_macs=False)
    for genotype in sample_genotypes(SearchSpace(5), 4, seed=11):
        a, b = exact(genotype), fast(genotype)
        assert a.latency_ms == b.latency_ms and a.params == b.params
        assert 0.8 < b.macs / a.macs < 1.2


@pytest.fixture(scope="module")
def supernet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished (tiny) supernet on digits at the search's image size, trained with seed 7."""
    from search.data.datasets import load_dataset
    from search.evaluation.oneshot import OneShotEvaluator, supernet_settings

    path = tmp_path_factory.mktemp("shared") / "supernet.pt"
    data = load_dataset("digits", image_size=SIZE, seed=7)
    settings = supernet_settings("digits", epochs=1, train_size=300, seed=7, image_size=SIZE, device="cpu")
    OneShotEvaluator(data, settings, path, 5).prepare(progress=False)
    return path


def test_searches_share_one_supernet_and_its_data_split(predictor: Path, supernet: Path, tmp_path: Path,
                                                         capsys) -> None:
    from search.score import main as score_main

    shared = ["--evaluator", "oneshot", "--supernet", str(supernet), "--latency-predictor", str(predictor),
              "--trials", "4", "--rerank", "0"]
    for seed in (1, 2):
        assert run_main([*SEARCH, *shared, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
        err = capsys.readouterr().err
        assert "supernet: training" not in err  # scored with the given supernet, not a new one
        run = tmp_path / f"s{seed}"
        assert (run / "supernet.pt").read_bytes() == supernet.read_bytes()  # the run keeps its copy
        records = read_history(run / HISTORY_NAME)
        assert len(records) == 4 and all(0.0 <= r.accuracy <= 1.0 for r in records)
        kind = json.loads((run / GENOTYPE_NAME).read_text())["metadata"]["accuracy_kind"]
        assert "one-shot supernet" in kind  # not called a proxy child's accuracy
    # both runs score on the validation images the supernet never trained on: the same split
    scores = []
    for seed in (1, 2):
        winner = str(tmp_path / "s1" / GENOTYPE_NAME)  # one genotype of the space, scored in both runs
        assert score_main([winner, "--run", str(tmp_path / f"s{seed}"), "--seeds", "0", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["settings"]["data_seed"] == 7
        scores.append(result["genotypes"][0]["mean_accuracy"])
    assert scores[0] == scores[1]


@pytest.mark.parametrize("change, needle", [
    (["--dataset", "cifar10"], "trained on 'digits'"),
    (["--blocks", "3"], "--blocks 3"),
    (["--evaluator", "proxy"], "add --evaluator oneshot"),
    (["--supernet-epochs", "2"], "drop --supernet-epochs"),
])
def test_a_supernet_that_does_not_fit_the_search_is_one_line(predictor: Path, supernet: Path, tmp_path: Path,
                                                              capsys, change: list[str], needle: str) -> None:
    argv = [*SEARCH, "--evaluator", "oneshot", "--supernet", str(supernet), "--latency-predictor",
            str(predictor), "--trials", "2", "--out", str(tmp_path / "run")]
    for i in range(0, len(change), 2):  # override or add the flag
        if change[i] in argv:
            argv[argv.index(change[i]) + 1] = change[i + 1]
        else:
            argv += change[i:i + 2]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_oneshot_candidates_score_the_same_on_ray_workers(predictor: Path, supernet: Path, tmp_path: Path,
                                                          capsys) -> None:
    """The weight-sharing evaluator on two Ray workers (the supernet goes through Ray's object
    store): every candidate scores what it scores in the search process."""
    pytest.importorskip("ray")
    shared = [*SEARCH, "--evaluator", "oneshot", "--supernet", str(supernet), "--latency-predictor",
              str(predictor), "--strategy", "random", "--trials", "6", "--rerank", "0", "--seed", "4"]
    assert run_main([*shared, "--out", str(tmp_path / "single")]) == 0
    assert run_main([*shared, "--workers", "2", "--out", str(tmp_path / "ray")]) == 0
    assert "2 children at a time" in capsys.readouterr().err
    single = {r.genotype_key: r.accuracy for r in read_history(tmp_path / "single" / HISTORY_NAME)}
    on_ray = {r.genotype_key: r.accuracy for r in read_history(tmp_path / "ray" / HISTORY_NAME)}
    assert on_ray == single and len(single) >= 4
