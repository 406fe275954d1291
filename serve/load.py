"""Load test for ``serve.http``: throughput and latency percentiles at fixed concurrency.

    python -m serve.load URL [--concurrency 1 8 32] [--requests 400] [--image FILE ...]
                             [--max-time 60s] [--json OUT]

Each of C client threads keeps one HTTP/1.1 connection open (``http.client``, standard
library only, so it runs on any device that serves) and sends its share of N requests
back to back. Before the load, every image is classified alone once: the reference. Under
load every 200 answer is checked against it (same classes in the same order, probabilities
within 1e-4), so a batching server that mixed up two requests is caught. Reported per
concurrency level: requests per second, p50/p90/p99 latency, answers by status, wrong
answers. The run is bounded: at most ``--requests`` requests per level and ``--max-time``
of wall time per level (the rest are not sent). Images default to built-in test patterns.
Imports: the standard library and numpy.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error

MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 1024
TOLERANCE = 1e-4


def pattern_images(count: int = 8, size: int = 32) -> list[bytes]:
    """``count`` distinct PNG test patterns (seeded noise with a colour cast)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        pixels = (rng.integers(0, 256, (size, size, 3)) // 2 + np.array([30 * i, 255 - 30 * i, 90]) // 2)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


class Target:
    """Where requests go: host, port and the ``/predict`` path of ``url``."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise NasdeployError(f"cannot load-test {url!r}: give the server's http://HOST:PORT URL")
        self.host, self.port = parts.hostname, parts.port or 80
        self.path = (parts.path.rstrip("/") or "") + "/predict?top_k=3"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        """An open keep-alive connection with Nagle's algorithm off (small requests go out at once)."""
        import socket

        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn


def _post(conn: http.client.HTTPConnection, target: Target, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", target.path, body=body, headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    return response.status, response.read()


def references(target: Target, images: list[bytes], timeout: float) -> list[list[tuple[str, float]]]:
    """Each image classified alone: ``[(class, probability), ...]`` per image."""
    conn = None
    try:
        conn = target.connect(timeout)
        out = []
        for body in images:
            status, data = _post(conn, target, body)
            if status != 200:
                raise NasdeployError(f"{target.host}:{target.port} answered {status} to a single request: "
                                     f"{data[:200].decode('utf-8', 'replace')}")
            out.append([(t["class"], t["probability"]) for t in json.loads(data)["top"]])
        return out
    except (OSError, http.client.HTTPException) as exc:
        raise NasdeployError(f"cannot reach {target.host}:{target.port}: {exc}") from None
    finally:
        if conn is not None:
            conn.close()


def _matches(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    return [c for c, _ in got] == [c for c, _ in want] and all(
        abs(a - b) <= TOLERANCE for (_, a), (_, b) in zip(got, want, strict=True))


def run_level(target: Target, images: list[bytes], expected: list[list[tuple[str, float]]],
              concurrency: int, requests: int, max_time_s: float, timeout: float) -> dict[str, Any]:
    """``requests`` POSTs from ``concurrency`` threads; the level's figures."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    wrong = [0]
    batch_sizes: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_time_s

    def client() -> None:
        conn = target.connect(timeout)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                body = images[i % len(images)]
                start = time.perf_counter()
                try:
                    status, data = _post(conn, target, body)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = target.connect(timeout)
                    with lock:
                        statuses[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - start
                ok, answer = False, {}
                if status == 200:
                    try:
                        answer = json.loads(data)
                        got = [(t["class"], t["probability"]) for t in answer["top"]]
                        ok = _matches(got, expected[i % len(images)])
                    except (ValueError, KeyError, TypeError):
                        ok = False  # not the server's JSON answer: counted as wrong
                with lock:
                    latencies.append(elapsed)
                    statuses[str(status)] += 1
                    if status == 200:
                        wrong[0] += not ok
                        batch_sizes.append(int(answer.get("batch_size", 1)))
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000.0
    done = int(sum(v for k, v in statuses.items() if k == "200"))
    return {"concurrency": concurrency, "requests": len(latencies), "ok": done, "wall_s": round(wall, 3),
            "throughput_rps": round(done / wall, 1) if wall > 0 else 0.0,
            "p50_ms": _pct(ms, 50), "p90_ms": _pct(ms, 90), "p99_ms": _pct(ms, 99),
            "statuses": dict(statuses), "wrong_answers": wrong[0],
            "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None}


def _pct(ms: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(ms, q)), 3) if len(ms) else None


def load_test(url: str, concurrency: list[int], requests: int, images: list[bytes],
              max_time_s: float = 60.0, timeout: float = 60.0, log: Any = print) -> dict[str, Any]:
    """Every concurrency level against ``url`` (one after another); the figures."""
    target = Target(url)
    expected = references(target, images, timeout)
    levels = []
    for c in concurrency:
        row = run_level(target, images, expected, c, requests, max_time_s, timeout)
        levels.append(row)
        log(f"{c:>4} clients: {row['throughput_rps']:8.1f} req/s  p50 {row['p50_ms']} ms  "
            f"p90 {row['p90_ms']} ms  p99 {row['p99_ms']} ms  statuses {row['statuses']}  "
            f"wrong {row['wrong_answers']}"
            + (f"  mean batch {row['mean_batch_size']}" if row["mean_batch_size"] else ""))
    return {"url": url, "images": len(images), "levels": levels}


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m serve.load", __doc__.strip())
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--concurrency", type=cli.positive_int, nargs="+", default=[1, 8, 32], metavar="C",
                        help=f"concurrent clients, one level after another (at most {MAX_CONCURRENCY})")
    parser.add_argument("--requests", type=cli.positive_int, default=400, metavar="N",
                        help=f"requests per level (at most {MAX_REQUESTS})")
    parser.add_argument("--image", type=Path, nargs="+", metavar="FILE",
                        help="images to send in turn (default: 8 built-in test patterns)")
    parser.add_argument("--max-time", default="60s", metavar="D", help="wall-time bound per level")
    cli.add_json(parser, "the figures per level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load-test a server; one line per level; ``error: ...`` and exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    try:
        from search.core.units import parse_latency

        if max(args.concurrency) > MAX_CONCURRENCY or args.requests > MAX_REQUESTS:
            raise NasdeployError(f"--concurrency is at most {MAX_CONCURRENCY} and --requests at most "
                                 f"{MAX_REQUESTS}")
        max_time = parse_latency(args.max_time) / 1000.0
        images = pattern_images()
        if args.image:
            images = []
            for path in args.image:
                if not path.is_file():
                    raise NasdeployError(f"--image {path}: no such file")
                images.append(path.read_bytes())
        quiet = args.json == cli.STDOUT
        result = load_test(args.url, args.concurrency, args.requests, images, max_time,
                           log=(lambda line: print(line, file=sys.stderr)) if quiet else print)
        cli.emit_json(args.json, result)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
