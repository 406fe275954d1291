"""The HTTP endpoint over a real socket on 127.0.0.1, including a flood of bad requests."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_fixtures import (
    build_tiny_model,
    export_tiny,
    png_bytes,
    running_server,
    sample_images,
    torch_probs,
)

from serve.http import bind, create_app
from serve.preprocess import preprocess
from serve.runtime import classify, load_runtime

MAX_BYTES = 64 * 1024
MAX_PIXELS = 300 * 300


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(build_tiny_model(), tmp_path_factory.mktemp("http") / "model.onnx")


@pytest.fixture(scope="module")
def runtime(tiny):
    return load_runtime(tiny.path)


@pytest.fixture(scope="module")
def server(runtime):
    """uvicorn in a thread on a free port; yields the base URL and stops it afterwards."""
    app = create_app(runtime, max_bytes=MAX_BYTES, top_k=5, max_pixels=MAX_PIXELS)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=20) as c:
        yield c


def _expected(tiny, image: Image.Image) -> np.ndarray:
    return torch_probs(tiny.model, preprocess([image], tiny.info))[0]


def test_health_and_info(client, tiny):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backend"] == "onnxruntime"
    assert health["provider"] == "CPUExecutionProvider" and health["num_classes"] == 10
    for path in ("/", "/info"):
        info = client.get(path).json()
        assert info["metadata"]["class_names"] == list(tiny.info.class_names)
        assert info["metadata"]["image_size"] == 16 and info["limits"]["max_bytes"] == MAX_BYTES
        assert info["runtime"]["provider"] == "CPUExecutionProvider"


def test_raw_and_multipart_predictions_agree_with_torch(client, tiny, runtime):
    image = sample_images(1)[0]
    expected = _expected(tiny, image)
    raw = client.post("/predict", content=png_bytes(image), headers={"content-type": "image/png"})
    form = client.post("/predict?top_k=3", files={"file": ("x.png", png_bytes(image), "image/png")})
    assert raw.status_code == 200 and form.status_code == 200
    raw, form = raw.json(), form.json()
    assert len(raw["top"]) == 5 and len(form["top"]) == 3
    order = np.argsort(-expected)
    assert [t["class"] for t in raw["top"]] == [tiny.info.class_names[i] for i in order[:5]]
    assert raw["top"][0]["probability"] == pytest.approx(expected.max(), abs=1e-5)
    assert form["top"] == raw["top"][:3]
    assert raw["latency_ms"] > 0 and raw["image"] == {"width": 24, "height": 20}
    assert raw["top"] == classify(runtime, [image])[0].to_dict()["top"]


def test_other_formats_and_modes_are_accepted(client):
    for image, fmt in [
        (Image.new("L", (30, 30), 90), "PNG"),
        (Image.new("RGBA", (30, 20), (0, 0, 255, 128)), "PNG"),
        (Image.new("RGB", (40, 25), (200, 10, 10)), "JPEG"),
        (Image.new("RGB", (40, 25), (10, 200, 10)), "WEBP"),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        response = client.post("/predict", content=buffer.getvalue())
        assert response.status_code == 200, (fmt, image.mode, response.text)


def _bad_requests() -> list[tuple[str, dict, int]]:
    """(description, httpx request kwargs, expected status)."""
    good = png_bytes(sample_images(1)[0])
    big = png_bytes(Image.new("RGB", (400, 400), (5, 5, 5)))
    return [
        ("empty", {"content": b""}, 400),
        ("garbage", {"content": os.urandom(512)}, 415),
        ("truncated png", {"content": good[: len(good) // 2]}, 415),
        ("png magic then junk", {"content": good[:16] + b"\x00" * 200}, 415),
        ("text", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ("too big", {"content": b"\x89PNG" + b"0" * (MAX_BYTES + 10)}, 413),
        ("too big, chunked", {"content": iter([b"x" * 40_000] * 3)}, 413),
        ("too many pixels", {"content": big}, 413),
        ("multipart without boundary",
         {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400),
        ("multipart, wrong field", {"files": {"image": ("a.png", good, "image/png")}}, 400),
        ("multipart, empty file", {"files": {"file": ("a.png", b"", "image/png")}}, 400),
        ("multipart, not an image", {"files": {"file": ("a.txt", b"abc", "text/plain")}}, 415),
        ("bad top_k", {"content": good, "params": {"top_k": "-3"}}, 400),
        ("huge top_k", {"content": good, "params": {"top_k": "100000"}}, 400),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda c: c[0])
def test_bad_requests_get_clear_4xx_json(client, case):
    _, kwargs, status = case
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] and "\n" not in body["error"]


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").json()["status"] == 404
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and "POST /predict" in wrong.json()["error"]


def test_declared_oversize_is_refused_before_the_body_arrives(server):
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        reply = b""
        while b"}" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"].startswith("request body is 999999999 bytes")


def test_survives_a_flood_of_bad_requests(server, client, tiny):
    cases = _bad_requests()
    seen: list[int] = []

    def worker(offset: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=server, timeout=20) as c:
            for i in range(offset, 320, 8):
                _, kwargs, _ = cases[i % len(cases)]
                if isinstance(kwargs.get("content"), type(iter([]))):
                    kwargs = {**kwargs, "content": iter([b"x" * 40_000] * 3)}
                statuses.append(c.post("/predict", **kwargs).status_code)
        return statuses

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for statuses in pool.map(worker, range(8)):
            seen.extend(statuses)
    elapsed = time.monotonic() - start
    assert len(seen) == 320 and elapsed < 120
    assert all(400 <= s < 500 for s in seen), sorted(set(seen))
    image = sample_images(3)[2]
    response = client.post("/predict", content=png_bytes(image))
    assert response.status_code == 200
    expected = _expected(tiny, image)
    assert response.json()["top"][0]["probability"] == pytest.approx(expected.max(), abs=1e-5)


def _start(argv: list[str]) -> tuple[subprocess.Popen, str]:
    """``python -m serve.http`` in a subprocess; returns it and the URL of its ``serving`` line."""
    proc = subprocess.Popen([sys.executable, "-m", "serve.http", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    for line in proc.stderr:  # uvicorn's own log lines come first; EOF if the server died
        if line.startswith("serving "):
            return proc, line.split(" on ", 1)[1].split()[0]
    _stop(proc)
    raise AssertionError(f"server did not start (exit {proc.returncode})")


def _stop(proc: subprocess.Popen) -> str:
    """Interrupt the server like Ctrl-C; returns what it printed on stdout since last read."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    rest = proc.stdout.read()
    proc.stdout.close()
    proc.stderr.close()
    return rest


def test_cli_serves_over_a_real_port_and_prints_its_card_as_json(tiny):
    proc, url = _start([str(tiny.path), "--port", "0", "--top-k", "2", "--max-bytes", "10M", "--json"])
    try:
        lines = []
        for line in proc.stdout:  # the JSON document, printed once listening
            lines.append(line)
            if line == "}\n":
                break
        startup = json.loads("".join(lines))
        assert startup["url"] == url and url.startswith("http://127.0.0.1:")
        assert startup["metadata"]["class_names"] == list(tiny.info.class_names)
        assert startup["limits"]["max_bytes"] == 10 * 1024**2 and startup["top_k"] == 2
        health = httpx.get(url + "/health", timeout=5)  # listening: answers at once
        assert health.json()["status"] == "ok"
        answer = httpx.post(url + "/predict", content=png_bytes(sample_images(1)[0]), timeout=10)
        assert answer.status_code == 200 and len(answer.json()["top"]) == 2
        assert httpx.get(url + "/info", timeout=5).json() == {k: v for k, v in startup.items() if k != "url"}
    finally:
        rest = _stop(proc)
    assert proc.returncode == 0 and rest == ""  # access logs went to stderr, not into the JSON


def test_cli_json_file_is_written_once_listening(tiny, tmp_path):
    target = tmp_path / "server.json"
    proc, url = _start([str(tiny.path), "--port", "0", "--json", str(target)])
    try:
        startup = json.loads(target.read_text())
        assert startup["url"] == url and startup["limits"]["max_bytes"] == 10 * 1024**2
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_cli_unwritable_json_file_stops_the_server_in_one_line(tiny, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("a file where a directory is expected")
    proc = subprocess.run([sys.executable, "-m", "serve.http", str(tiny.path), "--port", "0",
                           "--json", str(blocker / "server.json")], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: ") and proc.stdout == ""


def test_cli_bad_model_is_one_line_exit_2(tmp_path, capsys):
    from serve.http import main

    assert main([str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model file not found") and err.count("\n") == 1


@pytest.mark.parametrize("text, size", [("10M", 10 * 1024**2), ("512k", 512 * 1024), ("2MiB", 2 * 1024**2),
                                         ("1048576", 1048576)])
def test_max_bytes_takes_a_unit(text, size):
    from serve.http import build_parser

    assert build_parser().parse_args(["model.onnx", "--max-bytes", text]).max_bytes == size
    assert build_parser().parse_args(["model.onnx"]).max_bytes == 10 * 1024**2


@pytest.mark.parametrize("argv, message", [
    (["--max-bytes", "ten megs"], "argument --max-bytes: cannot read size 'ten megs'"),
    (["--port", "70000"], "a TCP port is at most 65535"),
    (["--top-k", "101"], "must be at most 100"),
    (["--top-k", "0"], "must be at least 1"),
])
def test_bad_flags_are_one_line(argv, message, capsys):
    from serve.http import main

    with pytest.raises(SystemExit) as info:
        main(["model.onnx", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_busy_port_is_a_one_line_error():
    from search.core.errors import NasdeployError

    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(NasdeployError, match="cannot listen on 127.0.0.1"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
