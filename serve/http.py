"""A small HTTP endpoint for devices that classify for others (Starlette + uvicorn).

    python -m serve.http MODEL [--host 127.0.0.1] [--port 8000] [--max-bytes 10M] [--top-k 5]
                               [--max-batch 32] [--max-delay 2ms] [--max-queue 256]
                               [--request-timeout 30s] [--backend auto] [--device auto]
                               [--json [FILE]]

``POST /predict``: the image as the raw body or as multipart field ``file``
(``?top_k=N`` optional) -> top-k JSON with latency. Concurrent requests are batched
dynamically (:mod:`serve.batching`: up to ``--max-batch`` images or ``--max-delay`` of
waiting; ``--max-batch 1`` serves one image per call). ``GET /health``: model, backend,
limits and the start-up self-test. ``GET /`` or ``/info``: the model's metadata.
``GET /metrics``: Prometheus metrics (:mod:`serve.metrics`). Bad requests get a 4xx JSON
``{"error": ...}``; nothing a client sends produces a 500. A full queue answers 503 and a
request not answered within ``--request-timeout`` 504, both JSON. SIGTERM or Ctrl-C stop
accepting connections and answer the requests in flight before the server exits.

Before it listens, the server classifies one blank image as a request would be: a model
that cannot serve (broken metadata, graph or scores) is refused then, in one line. Once
the server listens, one line ``serving MODEL (...) on URL`` goes to stderr; ``--json``
prints the URL and the ``/info`` document as JSON on stdout (``--json FILE``: writes
them there).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:  # a file on sys.path[0] would shadow imports
    import sys

    print("error: run this as `python -m serve.http ...`, not as a file "
          "(serve/http.py would shadow the standard library's http)", file=sys.stderr)
    raise SystemExit(2)

import argparse
import asyncio
import contextlib
import copy
import logging
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from serve.batching import Batcher, BatchSettings, QueueFull
from serve.errors import ImageError, ImageTooLargeError, ServeError
from serve.metrics import MetricsMiddleware, ServerMetrics
from serve.preprocess import MAX_PIXELS, load_image, preprocess
from serve.runtime import BACKENDS, DEVICES, Runtime, load_runtime, selftest

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
MAX_TOP_K = 100
INLINE_DECODE_BYTES = 32 * 1024
"""Uploads up to this size are decoded on the event loop (tens of microseconds); larger ones in
a worker thread, so a big image never stalls the other requests."""
DEFAULT_REQUEST_TIMEOUT_S = 30.0
MAX_REQUEST_TIMEOUT_S = 3600.0
log = logging.getLogger("serve.http")


@dataclass(frozen=True)
class HttpConfig:
    """Model, address and request limits of the server."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    max_bytes: int = DEFAULT_MAX_BYTES
    top_k: int = 5
    backend: str = "auto"
    device: str = "auto"
    batching: BatchSettings = BatchSettings()
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S


def create_app(
    runtime: Runtime,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    top_k: int = 5,
    max_pixels: int = MAX_PIXELS,
    batching: BatchSettings | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> Starlette:
    """The ASGI app serving ``runtime``; every error response is JSON.

    Args:
        batching: dynamic batching (default :class:`BatchSettings`: up to 32 images, 2 ms).
        request_timeout_s: a request not answered in this time gets 504.

    Raises:
        ServeError: ``runtime`` fails the self-test (:func:`serve.runtime.selftest`), or a
            setting is out of range.
    """
    if not 0 < request_timeout_s <= MAX_REQUEST_TIMEOUT_S:
        raise ServeError(f"--request-timeout must be above 0 and at most {MAX_REQUEST_TIMEOUT_S:g} s, "
                         f"got {request_timeout_s:g} s")
    metrics = ServerMetrics()
    service = _Service(runtime, max_bytes, top_k, max_pixels, batching or BatchSettings(),
                       request_timeout_s, metrics)
    routes = [
        Route("/", service.info, methods=["GET"]),
        Route("/info", service.info, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.metrics_page, methods=["GET"]),
        Route("/predict", service.predict, methods=["POST"]),
    ]
    handlers = {HTTPException: _http_error, Exception: _internal_error}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await service.batcher.close()  # uvicorn has answered the requests in flight by now

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def info_document(runtime: Runtime, max_bytes: int, top_k: int, max_pixels: int,
                  batching: BatchSettings | None = None,
                  request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """What ``GET /info`` answers: the model card, the runtime, limits and endpoints."""
    batching = batching or BatchSettings()
    return {
        "metadata": runtime.info.to_dict(),
        "runtime": runtime.describe(),
        "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels, "max_queue": batching.max_queue,
                   "request_timeout_s": request_timeout_s},
        "batching": {"max_batch": batching.max_batch, "max_delay_ms": batching.max_delay_s * 1000.0},
        "top_k": top_k,
        "endpoints": {
            "POST /predict": "image as raw body or multipart field 'file'; ?top_k=N",
            "GET /health": "model and backend",
            "GET /info": "this document",
            "GET /metrics": "Prometheus metrics",
        },
    }


class _Service:
    def __init__(self, runtime: Runtime, max_bytes: int, top_k: int, max_pixels: int,
                 batching: BatchSettings, request_timeout_s: float, metrics: ServerMetrics):
        self.runtime = runtime
        self.max_bytes = max_bytes
        self.top_k = top_k
        self.max_pixels = max_pixels
        self.batching = batching
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics
        self.description = runtime.describe()
        self.selftest = selftest(runtime)
        self.batcher = Batcher(runtime, batching, metrics)

    async def health(self, request: Request) -> JSONResponse:
        info = self.runtime.info
        name, probability = self.selftest.top[0]
        return JSONResponse({
            "status": "ok",
            "model": Path(self.description["model"]).name,
            "backend": self.description["backend"],
            "provider": self.description["provider"],
            "precision": info.precision,
            "image_size": info.image_size,
            "num_classes": len(info.class_names),
            "limits": {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels,
                       "resize_to": info.resize_to, "max_top_k": MAX_TOP_K,
                       "max_queue": self.batching.max_queue, "request_timeout_s": self.request_timeout_s},
            "batching": {"max_batch": self.batcher.max_batch,
                         "max_delay_ms": self.batching.max_delay_s * 1000.0, "queued": self.batcher.depth},
            "selftest": {"passed": True, "input": "blank grey image", "top_class": name,
                         "probability": probability, "latency_ms": self.selftest.latency_ms},
        })

    async def info(self, request: Request) -> JSONResponse:
        return JSONResponse(info_document(self.runtime, self.max_bytes, self.top_k, self.max_pixels,
                                          self.batching, self.request_timeout_s))

    async def metrics_page(self, request: Request) -> Response:
        self.metrics.queue_depth.set(self.batcher.depth)
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def predict(self, request: Request) -> JSONResponse:
        k = _parse_top_k(request.query_params.get("top_k"), self.top_k)
        with self.batcher.arriving():  # the batcher waits for requests on their way, not for nobody
            data = await self._image_bytes(request)
            start = time.perf_counter()
            if len(data) <= INLINE_DECODE_BYTES:  # a thumbnail decodes faster than a thread hand-off
                image, array = self._prepare(data)
            else:
                image, array = await run_in_threadpool(self._prepare, data)
            try:
                future = self.batcher.enqueue(array, k)
            except QueueFull as exc:
                raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        try:
            pred, batch = await asyncio.wait_for(future, self.request_timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"no answer within --request-timeout {self.request_timeout_s:g} s; "
                                     "the server is overloaded") from None
        except ServeError as exc:  # e.g. NaN scores for this image: not a server fault to retry
            raise HTTPException(422, f"cannot classify this image: {exc}") from None
        return JSONResponse({
            **pred.to_dict(),
            "total_ms": (time.perf_counter() - start) * 1000.0,
            "batch_size": batch,
            "image": {"width": image.width, "height": image.height},
            "model": Path(self.description["model"]).name,
            "backend": self.description["backend"],
            "provider": self.description["provider"],
        })

    def _prepare(self, data: bytes) -> tuple[Any, Any]:
        """Decode and preprocess in one worker-thread hop (each hop costs a wake-up under load)."""
        image = self._decode(data)
        return image, self._preprocess(image)

    def _preprocess(self, image: Any) -> Any:
        try:
            return preprocess([image], self.runtime.info)
        except ImageTooLargeError as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(415, str(exc)) from None

    def _decode(self, data: bytes) -> Any:
        try:  # the header's size is checked before decoding, against both limits
            return load_image(data, max_pixels=self.max_pixels, resize_to=self.runtime.info.resize_to)
        except ImageTooLargeError as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageError as exc:
            raise HTTPException(415, str(exc)) from None
        except Exception as exc:  # any other decoder failure is still the upload's fault
            raise HTTPException(415, f"upload is not a decodable image ({type(exc).__name__})") from None

    async def _image_bytes(self, request: Request) -> bytes:
        body = await _read_limited(request, self.max_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.lower().startswith("multipart/form-data"):
            body = await _multipart_file(request, body, self.max_bytes)
        if not body:
            raise HTTPException(
                400, "empty request: POST the image bytes, or a multipart field named 'file'"
            )
        return body


async def _read_limited(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not re.fullmatch(r"[0-9]{1,19}", declared):
            raise HTTPException(400, f"invalid Content-Length header {declared[:40]!r}")
        if int(declared) > max_bytes:
            raise HTTPException(413, _too_big(int(declared), max_bytes))
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise HTTPException(413, _too_big(total, max_bytes, at_least=True))
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def _multipart_file(request: Request, body: bytes, max_bytes: int) -> bytes:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except HTTPException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.detail}") from None
    except Exception as exc:
        raise HTTPException(400, f"malformed multipart body ({type(exc).__name__})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "multipart upload needs a file field named 'file'")
        return await upload.read()
    finally:
        await form.close()


def _parse_top_k(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,4}", raw) or not 1 <= int(raw) <= MAX_TOP_K:
        raise HTTPException(400, f"top_k must be an integer from 1 to {MAX_TOP_K}")
    return int(raw)


def _too_big(size: int, limit: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return f"request body is {more}{size} bytes; the limit is {limit} bytes"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    if exc.status_code in (404, 405):
        detail = (f"no route for {request.method} {request.url.path}; "
                  "use POST /predict, GET /health or GET /info")
    return JSONResponse({"error": detail, "status": exc.status_code}, exc.status_code,
                        headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s: %r", request.url.path, exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__})", "status": 500}, 500)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port=0``: any free port); NasdeployError if taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as exc:
        raise NasdeployError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(config: HttpConfig, json_target: str | None = None) -> None:
    """Load the model, bind the socket and serve until interrupted.

    Once uvicorn listens, the URL with the ``/info`` document goes to ``json_target`` (a
    ``--json`` value; ``None``: nowhere), then one ``serving ... on URL`` line to stderr.
    uvicorn's logs, the access log included, go to stderr too.
    """
    import uvicorn

    runtime = load_runtime(config.model, config.backend, config.device)
    app = create_app(runtime, max_bytes=config.max_bytes, top_k=config.top_k, batching=config.batching,
                     request_timeout_s=config.request_timeout_s)  # self-test: before binding
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    desc = runtime.describe()
    startup = {"url": url, **info_document(runtime, config.max_bytes, config.top_k, MAX_PIXELS,
                                           config.batching, config.request_timeout_s)}
    failure: list[BaseException] = []

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            try:
                cli.emit_json(json_target, startup)
                sys.stdout.flush()
            except USER_ERRORS as exc:  # e.g. an unwritable --json FILE: stop, report it
                failure.append(exc)
                self.should_exit = True
                return
            model = desc.get("model", config.model)  # the file a run directory resolved to
            batching = config.batching
            mode = (f"batches of up to {batching.max_batch} within {batching.max_delay_s * 1000:g} ms"
                    if batching.max_batch > 1 else "one image per call")
            print(f"serving {model} ({desc['backend']}, {desc['provider']}, {mode}) on {url}"
                  " - POST /predict, GET /health, GET /info, GET /metrics", file=sys.stderr, flush=True)

    logs = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logs["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout carries only --json
    # connections beyond the queue get uvicorn's own 503; the queue's JSON 503 comes first
    concurrency = config.batching.max_queue + config.batching.max_batch + 64
    server = Server(uvicorn.Config(
        app, log_config=logs, log_level="info", limit_concurrency=concurrency, timeout_keep_alive=5,
        server_header=False, timeout_graceful_shutdown=int(config.request_timeout_s) + 5,
    ))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if failure:
        raise failure[0]


def _seconds(text: str, flag: str) -> float:
    """A duration flag (``2ms``, ``30s``, ``0``) in seconds; one-line error otherwise."""
    from search.core.units import parse_latency

    if re.fullmatch(r"\s*0*\.?0*\s*(ms|s|us)?\s*", text) and re.search(r"0", text):
        return 0.0  # "0", "0ms": no waiting
    try:
        return parse_latency(text) / 1000.0
    except NasdeployError as exc:
        raise NasdeployError(f"{flag}: {exc}") from None


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (0: any free port)."""
    value = cli.non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, got {value}")
    return value


def top_k_count(text: str) -> int:
    """Classes per answer, 1 to ``MAX_TOP_K``."""
    value = cli.positive_int(text)
    if value > MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TOP_K}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m serve.http`` command line."""
    parser = cli.parser("python -m serve.http", __doc__.strip())
    parser.add_argument("model", type=Path,
                        help="model.onnx or model.engine, a folder holding model.onnx, or a search run "
                             "directory (its selected trial's exported model); bundled: the CIFAR-10 model "
                             "shipped with nasdeploy")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 for every interface")
    parser.add_argument("--port", type=port_number, default=8000,
                        help="TCP port; 0 picks a free one (printed once listening)")
    parser.add_argument("--max-bytes", type=cli.size_bytes, default="10M", metavar="SIZE",
                        help="largest request body, e.g. 512k, 10M or 1048576 (a bare number is bytes)")
    parser.add_argument("--top-k", type=top_k_count, default=5, metavar="K",
                        help=f"classes per answer when the request has no ?top_k= (1 to {MAX_TOP_K})")
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                        help="runtime that runs the model; auto picks it by the file suffix")
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="where the model runs; auto takes the best one available")
    parser.add_argument("--max-batch", type=cli.positive_int, default=32, metavar="N",
                        help="dynamic batching: run up to N concurrent requests as one batch; 1 serves one "
                             "image per call (default: 32)")
    parser.add_argument("--max-delay", default="2ms", metavar="D",
                        help="dynamic batching: wait at most this long for more requests after the first, "
                             "e.g. 2ms, 0.5ms, 0 (default: 2ms)")
    parser.add_argument("--max-queue", type=cli.positive_int, default=256, metavar="N",
                        help="requests that may wait; more get 503 with a JSON message (default: 256)")
    parser.add_argument("--request-timeout", default="30s", metavar="D",
                        help="a request not answered in this time gets 504, e.g. 30s, 500ms (default: 30s)")
    cli.add_json(parser, "the URL and the /info document (model card, runtime, limits) once listening,")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; ``error: ...`` and exit 2 for a bad model or a taken port."""
    args = build_parser().parse_args(argv)
    try:
        batching = BatchSettings(args.max_batch, _seconds(args.max_delay, "--max-delay"), args.max_queue)
        config = HttpConfig(args.model, args.host, args.port, args.max_bytes, args.top_k,
                            args.backend, args.device, batching,
                            _seconds(args.request_timeout, "--request-timeout"))
        serve(config, args.json)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
