"""Dynamic batching, metrics, the queue bound, the request timeout and graceful shutdown of
``serve.http``, over real sockets with a real ONNX model."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_fixtures import build_tiny_model, export_tiny, png_bytes, running_server, sample_images

from serve.batching import BatchSettings
from serve.http import create_app
from serve.runtime import Runtime, classify, load_runtime

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(build_tiny_model(), tmp_path_factory.mktemp("batching") / "model.onnx")


@pytest.fixture(scope="module")
def runtime(tiny):
    return load_runtime(tiny.path)


@pytest.fixture(scope="module")
def images():
    return sample_images(16)


@pytest.fixture(scope="module")
def reference(runtime, images):
    """Each image classified alone (batch 1), as a single request would be."""
    return [classify(runtime, [image], 3)[0] for image in images]


class SlowRuntime(Runtime):
    """The real runtime, with a device that takes ``delay_s`` per call (a slow edge device)."""

    def __init__(self, inner: Runtime, delay_s: float):
        self.inner, self.delay_s = inner, delay_s
        self.backend, self.info, self.path = inner.backend, inner.info, inner.path
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        time.sleep(self.delay_s)
        return self.inner.predict(batch)

    def describe(self) -> dict:
        return self.inner.describe()


def _post_all(url: str, bodies: list[bytes], clients: int) -> list[httpx.Response]:
    def send(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/predict?top_k=3", content=bodies[i])

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, range(len(bodies))))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(runtime, images, reference):
    app = create_app(runtime, batching=BatchSettings(max_batch=8, max_delay_s=0.02))
    order = [i % len(images) for i in range(96)]
    with running_server(app) as url:
        responses = _post_all(url, [png_bytes(images[i]) for i in order], clients=32)
        metrics = httpx.get(url + "/metrics").text
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    sizes = [r.json()["batch_size"] for r in responses]
    assert max(sizes) > 1 and max(sizes) <= 8  # batched, never beyond --max-batch
    for i, response in zip(order, responses, strict=True):
        got = [(t["class"], t["probability"]) for t in response.json()["top"]]
        want = reference[i].top
        assert [name for name, _ in got] == [name for name, _ in want]
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-5)
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    ok = [s for s in families["nasdeploy_requests"].samples
          if s.name == "nasdeploy_requests_total" and s.labels == {"path": "/predict", "status": "200"}]
    assert ok and ok[0].value == 96
    batch = {s.name: s.value for s in families["nasdeploy_batch_size"].samples if not s.labels.get("le")}
    assert batch["nasdeploy_batch_size_sum"] == 96  # every image ran exactly once
    assert batch["nasdeploy_batch_size_count"] < 96  # in fewer calls than images


def test_a_bad_image_fails_only_its_own_request(runtime, images, reference):
    app = create_app(runtime, batching=BatchSettings(max_batch=16, max_delay_s=0.05))
    bodies = [png_bytes(images[i % 4]) for i in range(12)]
    bodies[5] = b"\x89PNG\r\n\x1a\n not really a png"
    with running_server(app) as url:
        responses = _post_all(url, bodies, clients=12)
    assert responses[5].status_code == 415 and "error" in responses[5].json()
    for i, r in enumerate(responses):
        if i != 5:
            assert r.status_code == 200
            assert r.json()["top"][0]["class"] == reference[i % 4].top[0][0]


def test_batch_one_serving_runs_one_image_per_call(runtime, images):
    slow = SlowRuntime(runtime, 0.0)
    app = create_app(slow, batching=BatchSettings(max_batch=1, max_delay_s=0.0))
    with running_server(app) as url:
        responses = _post_all(url, [png_bytes(images[0])] * 16, clients=8)
    assert all(r.status_code == 200 and r.json()["batch_size"] == 1 for r in responses)
    assert set(slow.calls) == {1}


def test_a_full_queue_is_a_json_503_and_the_rest_are_answered(runtime, images):
    slow = SlowRuntime(runtime, 0.3)
    app = create_app(slow, batching=BatchSettings(max_batch=1, max_delay_s=0.0, max_queue=2))
    with running_server(app) as url:
        responses = _post_all(url, [png_bytes(images[1])] * 10, clients=10)
        metrics = httpx.get(url + "/metrics").text
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and codes.count(200) >= 3
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "--max-queue 2" in busy.json()["error"]
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    refused = [s.value for s in families["nasdeploy_requests"].samples
               if s.name == "nasdeploy_requests_total" and s.labels.get("status") == "503"]
    assert refused == [codes.count(503)]


def test_a_request_not_answered_in_time_is_a_json_504(runtime, images):
    slow = SlowRuntime(runtime, 1.0)
    app = create_app(slow, batching=BatchSettings(max_batch=1), request_timeout_s=0.2)
    with running_server(app) as url:
        started = time.monotonic()
        response = httpx.post(url + "/predict", content=png_bytes(images[0]), timeout=30)
        elapsed = time.monotonic() - started
    assert response.status_code == 504 and "--request-timeout 0.2 s" in response.json()["error"]
    assert elapsed < 0.9


def _start(argv: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "serve.http", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    for line in proc.stderr:
        if line.startswith("serving "):
            return proc, line.split(" on ", 1)[1].split()[0]
    proc.kill()
    raise AssertionError(f"server did not start (exit {proc.wait()})")


def test_sigterm_answers_the_requests_in_flight_then_exits(tiny, images, reference):
    proc, url = _start([str(tiny.path), "--port", "0", "--max-batch", "64", "--max-delay", "900ms"])
    results: list[httpx.Response] = []

    def send(i: int) -> None:
        body = png_bytes(images[i])

        def slowly():  # half the body now, the rest after the signal: the request is in flight
            yield body[: len(body) // 2]
            time.sleep(1.0)
            yield body[len(body) // 2:]

        results.append(httpx.post(url + "/predict?top_k=3", content=slowly(), timeout=30))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(timeout=30)
    # uvicorn re-raises the signal once it has shut down gracefully: the exit says SIGTERM
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    proc.stdout.close()
    proc.stderr.close()
    assert len(results) == 4 and all(r.status_code == 200 for r in results), [r.text for r in results]
    for r in results:
        assert r.json()["top"][0]["class"] in {ref.top[0][0] for ref in reference[:4]}
    assert max(r.json()["batch_size"] for r in results) >= 2  # requests on their way are waited for
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + "/predict", content=png_bytes(images[0]), timeout=5)


def test_a_lone_request_does_not_wait_for_the_batch_delay(runtime, images):
    app = create_app(runtime, batching=BatchSettings(max_batch=32, max_delay_s=0.5))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        c.post("/predict", content=png_bytes(images[0]))  # warm
        started = time.monotonic()
        for _ in range(5):
            assert c.post("/predict", content=png_bytes(images[0])).json()["batch_size"] == 1
        assert time.monotonic() - started < 2.0  # five requests, none waited 0.5 s


@pytest.mark.parametrize("argv, needle", [
    (["--max-batch", "0"], "--max-batch"),
    (["--max-batch", "5000"], "--max-batch must be 1 to 1024"),
    (["--max-delay", "5"], "--max-delay"),
    (["--max-delay", "3s"], "--max-delay must be 0 to 1 s"),
    (["--max-queue", "0"], "--max-queue"),
    (["--request-timeout", "0"], "--request-timeout"),
    (["--request-timeout", "2h"], "--request-timeout"),
])
def test_bad_batching_flags_are_one_line(tiny, argv, needle):
    proc = subprocess.run([sys.executable, "-m", "serve.http", str(tiny.path), "--port", "0", *argv],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[-1].startswith("python -m serve.http: error"), proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_info_and_health_describe_the_batching(runtime):
    app = create_app(runtime, batching=BatchSettings(max_batch=4, max_delay_s=0.001, max_queue=9))
    with running_server(app) as url:
        info = httpx.get(url + "/info").json()
        health = httpx.get(url + "/health").json()
    assert info["batching"] == {"max_batch": 4, "max_delay_ms": 1.0}
    assert info["limits"]["max_queue"] == 9 and "GET /metrics" in info["endpoints"]
    assert health["batching"]["max_batch"] == 4 and health["batching"]["queued"] == 0


def test_metrics_count_every_route_and_status(runtime, images):
    app = create_app(runtime)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        c.get("/health")
        c.post("/predict", content=b"")
        c.get("/nowhere")
        c.post("/predict", content=png_bytes(images[0]))
        text = c.get("/metrics").text
    samples = {(s.labels.get("path"), s.labels.get("status")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "nasdeploy_requests_total"}
    assert samples == {("/health", "200"): 1, ("/predict", "400"): 1, ("other", "404"): 1,
                       ("/predict", "200"): 1}
