"""``torchrun --nproc-per-node 2 -m search.train``: data-parallel training on two CPU processes
(gloo), a checkpoint that exports and serves like a single-process one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export.onnx_export import ExportConfig, export_model
from search.nn.checkpoint import read_checkpoint
from search.training.loop import shard_order
from serve.runtime import classify, load_runtime

REPO = Path(__file__).resolve().parents[1]


def test_shards_split_one_permutation_like_a_distributed_sampler():
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    shards = [shard_order(order, (rank, 3)) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded to a multiple of the world size
    merged = torch.cat(shards).tolist()
    assert sorted(set(merged)) == list(range(11)) and len(merged) == 12  # every image, one repeated
    assert torch.equal(shard_order(order, None), order)


@pytest.mark.timeout(600)
def test_two_processes_train_one_checkpoint_that_exports_and_serves(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "search.train", "nasnet-a",
           "--dataset", "digits", "--variant", "1@48", "--epochs", "2", "--train-size", "600",
           "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("test accuracy") for line in lines) == 1  # rank 0 speaks for the job
    assert any("2 processes (torchrun), batch 64 each, 128 in all" in line for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 2
    state = read_checkpoint(out / "checkpoint.pt")
    assert len(state["training"]["history"]) == 2
    assert not any(key.startswith("module.") for key in state["state_dict"])  # the plain network
    result = export_model(ExportConfig(source=str(out)), log=lambda *_: None)  # verified against torch
    runtime = load_runtime(result.model_path)
    from PIL import Image

    prediction = classify(runtime, [Image.new("RGB", (16, 16), (200, 30, 30))], 3)[0]
    assert len(prediction.top) == 3 and abs(sum(p for _, p in prediction.top)) <= 1.0 + 1e-5
