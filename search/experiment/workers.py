"""Child evaluation on Ray: the worker pool the parallel loop hands children to.

``--workers N`` starts a local Ray instance for the run (``ray.init(num_cpus=N)``, bound to
127.0.0.1, shut down with the run); ``--ray-address HOST:PORT`` joins an existing cluster
(``ray start --head`` on one machine, ``ray start --address HOST:PORT`` on the others; see
docs/distributed.md). ``ray`` is imported only here and only when one of the two is given.

Every child's training is a Ray task (one CPU, ``gpus_per_child`` GPUs, retried
:data:`MAX_RETRIES` times when its worker process or node dies). The accuracy function
(the proxy trainer with the dataset, or the one-shot evaluator with its trained supernet)
goes into the object store once (``ray.put``) and each worker process unpickles it once.
A measured latency is a Ray task that needs the custom resource :data:`LATENCY_RESOURCE`
(the node that holds the target device joined with ``--resources '{"latency_target": 1}'``,
one measurement at a time there); when no node has it, latency is measured by the search
process itself, as without workers (one log line says so). A predicted latency is always
computed by the search process. Workers never touch the run directory: results come back
to the search process, the only writer of ``trials.jsonl``.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from search.core.errors import NasdeployError, one_line

LATENCY_RESOURCE = "latency_target"
"""Custom Ray resource of the node that measures latency (the deployment device)."""
MAX_RETRIES = 2
"""Times a child's task is run again when its worker process or node dies."""
CONNECT_TIMEOUT_S = 5.0
"""How long ``--ray-address`` may take to answer before the run gives up (one line, exit 2)."""
WAIT_S = 1.0
"""Longest wait for a result before the loop looks again (keeps Ctrl-C responsive)."""

_SHARED: dict[str, Any] = {}
"""In a worker process: object id -> the unpickled shared function (unpickled once)."""
_METERS: dict[Any, Any] = {}
"""In a worker process on the latency target: settings -> its LatencyMeter."""


def _shared(box: list[Any]) -> Any:
    """The shared object behind ``box`` (a one-element list holding its ObjectRef, so Ray does
    not resolve it for every task), unpickled once per worker process."""
    import ray

    (ref,) = box
    key = ref.hex()
    if key not in _SHARED:
        _SHARED.clear()  # one search's function at a time
        _SHARED[key] = ray.get(ref)
    return _SHARED[key]


def _accuracy_task(box: list[Any], genotype: Any) -> Any:
    """Train / score one child in a worker (the result of the run's accuracy function)."""
    return _shared(box)(genotype)


def _meter(settings: Any) -> Any:
    from search.evaluation.latency import LatencyMeter

    if settings not in _METERS:
        _METERS[settings] = LatencyMeter(settings)  # checks the device: a setup error propagates
    return _METERS[settings]


def _cost_task(settings: Any, genotype: Any) -> dict[str, Any]:
    """Measure one child's latency on the latency target (the fields of its trial record)."""
    from search.experiment.loop import measure_cost

    return measure_cost(genotype, _meter(settings))


def _check_task(settings: Any) -> str:
    """Open the latency device on the target once: a missing runtime fails the run at once."""
    from search.runtime.host import cpu_model

    _meter(settings)
    return f"{socket.gethostname()} ({cpu_model()})"


@dataclass(frozen=True)
class Failed:
    """The accuracy result of a child whose task was lost (its worker died past the retries)."""

    error: str
    accuracy: float = 0.0
    status: str = "failed"
    train_time_s: float = 0.0


def parse_address(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of ``--ray-address`` (``None`` for ``auto``); one line when malformed."""
    text = address.strip()
    if text == "auto":
        return None
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise NasdeployError(f"--ray-address {address[:80]!r}: give HOST:PORT of the Ray head (what "
                             "`ray start --head` prints, e.g. 10.0.0.5:6379) or auto")
    return host.strip("[]"), int(port)


def check_gpus(value: float | None) -> None:
    """``--gpus-per-child``: 0, a fraction below 1 or a whole number (what Ray accepts)."""
    if value is None:
        return
    if not (math.isfinite(value) and value >= 0) or (value > 1 and value != int(value)):
        raise NasdeployError(f"--gpus-per-child must be 0, a fraction below 1 (0.5: two children "
                             f"share a GPU) or a whole number, got {value:g}"[:160])


_PROBE = """import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError:
    pass  # a Ray head that wants its token: ray.init says so in one line
"""
"""Asks the Ray head's GCS for its cluster id: fails fast on a port that is not a Ray head."""


def _probe(address: str, target: tuple[str, int]) -> None:
    """One line within :data:`CONNECT_TIMEOUT_S` (plus a Python start) unless a Ray head
    answers at ``target``; ``ray.init`` itself would retry for about 20 s, logging each try."""
    def refuse(reason: str) -> NasdeployError:
        return NasdeployError(f"--ray-address {address}: no Ray head answers there ({reason}); start one "
                              "with `ray start --head` or check the address")

    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise refuse(exc.strerror or type(exc).__name__) from None
    host = f"[{target[0]}]" if ":" in target[0] else target[0]
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, f"{host}:{target[1]}"], capture_output=True,
                               text=True, timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise refuse(f"no answer from its GCS within {CONNECT_TIMEOUT_S:g} s") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise refuse(last[:200])


class RayPool:
    """Ray tasks for children; build with :meth:`connect`, release with :meth:`close`."""

    def __init__(self, ray: Any, slots: int, gpus_per_child: float, own: bool, stream: TextIO):
        self.ray = ray
        self.slots = slots
        self.gpus_per_child = gpus_per_child
        self.own = own
        self.stream = stream
        self.has_target = any(node.get("Alive") and node.get("Resources", {}).get(LATENCY_RESOURCE)
                              for node in ray.nodes())
        """A node of the cluster has :data:`LATENCY_RESOURCE`."""
        self.remote_latency = False
        self.latency_host: str | None = None
        self._box: list[Any] | None = None
        self._cost_settings: Any = None
        self._accuracy = ray.remote(_accuracy_task).options(
            num_cpus=1, num_gpus=gpus_per_child, max_retries=MAX_RETRIES, retry_exceptions=False)
        self._cost = ray.remote(_cost_task).options(
            num_cpus=0, resources={LATENCY_RESOURCE: 1}, max_retries=MAX_RETRIES, retry_exceptions=False)

    @classmethod
    def connect(cls, workers: int | None, address: str | None, gpus_per_child: float | None,
                device: str = "auto", stream: TextIO | None = None) -> RayPool:
        """Start a local Ray instance (``workers`` CPUs) or join the cluster at ``address``.

        Raises:
            NasdeployError: Ray missing, ``address`` malformed or unreachable within
                :data:`CONNECT_TIMEOUT_S`, or the cluster cannot run one child.
        """
        stream = sys.stderr if stream is None else stream
        check_gpus(gpus_per_child)
        if workers is not None and workers < 1:
            raise NasdeployError(f"--workers must be at least 1, got {workers}")
        target = parse_address(address) if address is not None else None
        try:
            import ray
        except ImportError:
            raise NasdeployError("--workers and --ray-address need Ray: pip install "
                                 "'nasdeploy[distributed]'") from None
        if target is not None:
            _probe(address or "", target)
        import logging

        if address is None or (target is not None and target[0] in ("127.0.0.1", "localhost", "::1")):
            # the run's own instance serves only this search, and a head on the loopback is
            # reached from it: keep Ray on 127.0.0.1 (on Linux it takes the host's address)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=True)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:  # noqa: BLE001 - Ray's connection and start-up errors
            raise NasdeployError(f"cannot {'start Ray' if address is None else f'join {address}'} "
                                 f"({one_line(exc, 200)})") from None
        try:
            pool = cls._sized(ray, workers, gpus_per_child, device, address is None, stream)
        except BaseException:
            ray.shutdown()
            raise
        return pool

    @classmethod
    def _sized(cls, ray: Any, workers: int | None, gpus: float | None, device: str, own: bool,
               stream: TextIO) -> RayPool:
        total = ray.cluster_resources()
        cpus, cluster_gpus = int(total.get("CPU", 0)), float(total.get("GPU", 0))
        if gpus is None:  # a GPU per child where the cluster has GPUs and the child may use one
            gpus = 1.0 if cluster_gpus >= 1 and device != "cpu" else 0.0
        if gpus > cluster_gpus:
            raise NasdeployError(f"--gpus-per-child {gpus:g}: the Ray cluster has {cluster_gpus:g} GPU(s)")
        if cpus < 1:
            raise NasdeployError("the Ray cluster has no CPU to train a child on")
        fits = cpus if gpus == 0 else min(cpus, int(cluster_gpus / gpus + 1e-9))
        return cls(ray, workers if workers is not None else fits, gpus, own, stream)

    # --- what the tasks share ----------------------------------------------------------

    def share(self, accuracy_fn: Any, latency_settings: Any, measured: bool) -> None:
        """Put ``accuracy_fn`` in the object store once; route latency (see the module doc).

        ``measured``: the cost function times candidates (a LatencyMeter); a predicted cost
        stays in the search process.
        """
        self._box = [self.ray.put(accuracy_fn)]
        self.remote_latency = measured and self.has_target
        if self.remote_latency:
            self._cost_settings = latency_settings
            check = self.ray.remote(_check_task).options(
                num_cpus=0, resources={LATENCY_RESOURCE: 1}, max_retries=MAX_RETRIES)
            self.latency_host = self._get(check.remote(latency_settings))
            print(f"workers: {self.slots} children at a time; latency measured on the "
                  f"{LATENCY_RESOURCE} node {self.latency_host}", file=self.stream, flush=True)
        elif measured:
            print(f"workers: {self.slots} children at a time; no node has the {LATENCY_RESOURCE} "
                  "resource, so latency is measured here by the search process", file=self.stream,
                  flush=True)
        else:
            print(f"workers: {self.slots} children at a time; latency predicted by the search process",
                  file=self.stream, flush=True)

    # --- tasks --------------------------------------------------------------------------

    def submit_accuracy(self, genotype: Any) -> Any:
        if self._box is None:
            raise RuntimeError("call share() before submitting children")
        return self._accuracy.remote(self._box, genotype)

    def submit_cost(self, genotype: Any) -> Any:
        return self._cost.remote(self._cost_settings, genotype)

    def wait(self, refs: list[Any], timeout_s: float = WAIT_S) -> list[Any]:
        """The refs of ``refs`` whose tasks have finished (after at most ``timeout_s``)."""
        if not refs:
            return []
        ready, rest = self.ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready and rest:
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return ready

    def _get(self, ref: Any) -> Any:
        """A task's value; a :class:`NasdeployError` raised in the task is raised here as such."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, NasdeployError):
                raise NasdeployError(str(cause)) from None
            raise

    def result(self, ref: Any) -> Any:
        """A finished child's accuracy result, or :class:`Failed` with the reason when its task
        was lost (the worker or node died after every retry) or failed unexpectedly."""
        try:
            return self._get(ref)
        except NasdeployError:
            raise
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            return Failed(f"worker: {one_line(cause, 300)}")
        except self.ray.exceptions.RayError as exc:  # worker crashed, node died, object lost
            return Failed(f"worker lost after {MAX_RETRIES} retries: {one_line(exc, 260)}")

    def cost(self, ref: Any) -> dict[str, Any]:
        """A finished latency task's record fields (a lost task: a failed measurement)."""
        value = self.result(ref)
        if isinstance(value, Failed):
            return {"latency_ms": None, "macs": None, "params": None, "accuracy": 0.0,
                    "status": "failed", "error": f"latency {value.error}", "train_time_s": 0.0,
                    "latency_time_s": 0.0}
        return value

    def cancel(self, refs: list[Any]) -> None:
        """Stop the tasks of ``refs`` (children in flight when the loop was interrupted)."""
        for ref in refs:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its worker gone
                pass

    def close(self) -> None:
        """Stop the run's own Ray instance, or leave the cluster (its tasks of this run end)."""
        self.ray.shutdown()
