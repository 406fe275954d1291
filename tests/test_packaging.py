"""Packaging: the wheel's contents and extras, a torch-free serving run, a fresh `[serve]` install,
and the CLI modules that must not run as files (they would shadow ``http``, ``onnx``, ``tensorrt``).
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from serve_fixtures import CLASS_NAMES, served_model

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "export", "serve", "app")
SERVE_SET = {"numpy", "onnx", "pillow", "onnxruntime", "rich", "starlette", "uvicorn", "python-multipart",
             "prometheus-client", "httptools", "uvloop"}
HEAVY = {"torch", "torchvision", "optuna", "streamlit", "matplotlib"}
SAMPLE = REPO / "app" / "samples" / "flower.jpg"

BLOCKER = f'''"""Stands in for a torch-free install: importing {sorted(HEAVY)} fails."""
import importlib.abc
import sys

BLOCKED = {sorted(HEAVY)!r}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
'''


def copy_sources(dest: Path) -> Path:
    """Copy the files git would see (tracked or untracked, not ignored) to ``dest``.

    Builds then run on the copy and leave no ``build/`` or ``*.egg-info`` in the work tree.
    """
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # skips files deleted from the work tree but still in the index
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def installed_names(requires: list[Requirement], extras: set[str]) -> set[str]:
    """Distribution names ``pip install 'nasdeploy[extras]'`` asks for (self-references followed)."""
    names: set[str] = set()
    todo, seen = ["", *extras], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in requires:
            wanted = req.marker is None if extra == "" else (
                req.marker is not None and req.marker.evaluate({"extra": extra}))
            if not wanted:
                continue
            if canonicalize_name(req.name) == "nasdeploy":
                todo.extend(req.extras)
            else:
                names.add(canonicalize_name(req.name))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = copy_sources(root / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist")], check=True, timeout=300)
    (built,) = (root / "dist").glob("nasdeploy-*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return served_model(tmp_path_factory.mktemp("served") / "model.onnx")


def test_wheel_holds_every_module_and_the_samples_but_no_tests(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {p.relative_to(REPO).as_posix() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
               if "__pycache__" not in p.parts and (p.parent / "__init__.py").exists()}
    subpackages = {f"search/{p.parent.name}/__init__.py" for p in (REPO / "search").glob("*/__init__.py")}
    assert len(subpackages) >= 10 and subpackages <= names
    assert sorted(modules - names) == []
    samples = {p.relative_to(REPO).as_posix() for p in (REPO / "app" / "samples").iterdir()
               if p.suffix in (".png", ".jpg")}
    assert samples and samples <= names
    bundled = {f"serve/models/cifar10/{n}" for n in ("model.onnx", "export_report.json", "MODEL.md")}
    assert bundled <= names  # the CIFAR-10 model `bundled` names, so a fresh install classifies at once
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "docs")]


def test_extras_keep_serving_light_and_never_mix_onnxruntime_builds(metadata):
    requires = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"serve", "gpu", "search", "app", "dev"} <= extras
    assert installed_names(requires, {"serve"}) == SERVE_SET
    assert installed_names(requires, {"gpu"}) == SERVE_SET - {"onnxruntime"} | {
        "onnxruntime-gpu", "tensorrt", "cuda-python"}
    assert "onnxruntime" not in installed_names(requires, set())
    for extra in extras:
        assert {"onnxruntime", "onnxruntime-gpu"} - installed_names(requires, {extra}), extra
    search, app = installed_names(requires, {"search"}), installed_names(requires, {"app"})
    assert {"torch", "torchvision", "optuna", "onnxruntime"} <= search and "streamlit" not in search
    assert {"streamlit", "onnxruntime"} <= app and "torch" not in app
    assert search | app | {"pytest", "ruff", "playwright", "httpx"} <= installed_names(requires, {"dev"})
    assert metadata["License-Expression"] == "MIT"


def test_serving_runs_without_torch_optuna_streamlit_matplotlib(tmp_path, model):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)

    blocked = run("-c", "import torch")
    assert blocked.returncode == 1 and "blocked by the test" in blocked.stderr

    predicted = run("-m", "serve.predict", str(model), str(SAMPLE), "--json")
    assert predicted.returncode == 0, predicted.stderr
    (prediction,) = json.loads(predicted.stdout)["predictions"]
    assert prediction["top"][0]["class"] in CLASS_NAMES

    shipped = run("-m", "serve.predict", "bundled", str(SAMPLE), "--json")
    assert shipped.returncode == 0, shipped.stderr
    (prediction,) = json.loads(shipped.stdout)["predictions"]
    assert prediction["top"][0]["class"] in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                             "horse", "ship", "truck")

    benched = run("-m", "serve.bench", str(model), "--batch-sizes", "1", "--warmup", "1", "--iters", "3")
    assert benched.returncode == 0 and "p50" in benched.stdout, benched.stderr

    server = subprocess.Popen([sys.executable, "-m", "serve.http", str(model), "--port", "0"], cwd=REPO,
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in server.stderr:  # the first line naming the URL; EOF if the server died
            if line.startswith("serving "):
                url = line.split(" on ", 1)[1].split()[0]
                break
        assert url and url.startswith("http://127.0.0.1:"), f"server did not start (exit {server.poll()})"
        answer = httpx.post(url + "/predict?top_k=3", content=SAMPLE.read_bytes(), timeout=30)
        assert answer.status_code == 200, answer.text
        assert [entry["class"] in CLASS_NAMES for entry in answer.json()["top"]] == [True] * 3
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_venv_with_the_serve_extra_predicts_without_torch(tmp_path, model):
    """A real ``pip install '<repo>[serve]'`` into an empty venv (packages come from the index)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    source = copy_sources(tmp_path / "src")
    started = time.monotonic()
    # A fresh venv's setuptools may predate pyproject's build requirement, so pip builds in isolation.
    subprocess.run([python, "-m", "pip", "install", "-q", f"{source}[serve]"], env=env, check=True,
                   timeout=1000)
    print(f"pip install '[serve]' into a fresh venv: {time.monotonic() - started:.0f} s")
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], env=env, check=True,
                            capture_output=True, text=True, timeout=120).stdout
    installed = {canonicalize_name(entry["name"]) for entry in json.loads(listed)}
    assert SERVE_SET | {"nasdeploy"} <= installed
    assert not installed & HEAVY, installed & HEAVY

    elsewhere = tmp_path / "elsewhere"  # not the repository: the installed package must be imported
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import serve; print(serve.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True, timeout=60).stdout
    assert Path(where.strip()).is_relative_to(venv)
    predicted = subprocess.run([python, "-m", "serve.predict", str(model), str(SAMPLE)], cwd=elsewhere,
                               env=env, capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    first_row = predicted.stdout.splitlines()[2].split()
    assert first_row[0] == SAMPLE.name and first_row[2] in CLASS_NAMES
    shipped = subprocess.run([python, "-m", "serve.predict", "bundled", str(SAMPLE), "--json"], cwd=elsewhere,
                             env=env, capture_output=True, text=True, timeout=120)
    assert shipped.returncode == 0, shipped.stderr  # the bundled model came with the install
    assert Path(json.loads(shipped.stdout)["runtime"]["model"]).is_relative_to(venv)


@pytest.mark.parametrize("module", ["serve.http", "export.onnx", "export.tensorrt"])
def test_cli_module_run_as_a_file_says_use_python_m(module: str):
    path = REPO / (module.replace(".", "/") + ".py")
    result = subprocess.run([sys.executable, str(path), "model.onnx"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: run this as `python -m {module} ...`")
    assert result.stderr.count("\n") == 1
    helped = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and f"python -m {module}" in helped.stdout
