"""Serialized TensorRT engines from nasdeploy ONNX models (TensorRT 10.x and 11.x).

Precision comes from the model, never from builder flags: TensorRT 11 removed
``BuilderFlag.FP16``/``INT8`` and implicit INT8 calibration, and 10.x supports the same
strongly typed path. So the network is always created strongly typed (the creation flag
is honoured by 10.x and accepted-but-ignored by 11.x), ``--fp16`` builds from the fp16
ONNX (``model.fp16.onnx``, derived on the CPU when missing) and ``--int8`` from the QDQ
model with symmetric activations that ``python -m export.onnx --int8`` writes.

Everything except the build itself (argument checks, which ONNX is consumed, the
optimization-profile shapes, the ``trtexec`` command line) runs without TensorRT, so it is
tested on CPU machines; :func:`build_engine` needs ``tensorrt`` and a CUDA GPU.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from export.quantize import make_fp16, random_inputs
from search.core.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from search.core.errors import NasdeployError
from search.core.rundir import ENGINE_SUFFIX, ENGINE_SUFFIXES, engine_path, sidecar_path, variant_path
from search.runtime.tensorrt import import_cudart, parse_strongly_typed
from search.space.card import MAX_BATCH, ModelCard
from serve.metadata import read_onnx_card

INSTALL_HINT = "pip install 'nasdeploy[gpu]' on a machine with an NVIDIA GPU and its CUDA driver"
SIDECAR_FORMAT = "nasdeploy-engine"
DEFAULT_OPT_BATCH = 8
DEFAULT_MAX_BATCH = 32
PRECISIONS = ("fp32", "fp16", "int8")
MIB = 1 << 20
DEFAULT_WORKSPACE = 1 << 30
"""Builder workspace limit in bytes (1 GiB); at least one MiB is accepted."""


@dataclass(frozen=True)
class TrtConfig:
    """What ``python -m export.tensorrt`` was asked to build."""

    onnx: str
    out: str | None = None
    fp16: bool = False
    int8: bool = False
    workspace_bytes: int = DEFAULT_WORKSPACE
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    timing_cache: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class Profile:
    """Optimization profile of the input tensor: min / opt / max shapes (NCHW)."""

    input_name: str
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]
    dynamic: bool


@dataclass(frozen=True)
class BuildPlan:
    """Everything decided before TensorRT is touched."""

    onnx: Path
    engine: Path
    info: ModelCard
    precision: str
    profile: Profile
    workspace_bytes: int
    timing_cache: Path | None
    derived: list[str] = field(default_factory=list)
    source: Path | None = None
    """The fp32 ONNX a derived model is made from (``None`` when nothing is derived)."""

    @property
    def sidecar(self) -> Path:
        """``model.engine`` -> ``model.engine.json`` (the name ``serve`` looks for)."""
        return sidecar_path(self.engine)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plan (what ``--json`` prints): files, precision, profile, workspace."""
        return {"onnx": str(self.onnx), "derived_from": str(self.source) if self.source else None,
                "engine": str(self.engine), "sidecar": str(self.sidecar), "precision": self.precision,
                "profile": asdict(self.profile), "workspace_bytes": self.workspace_bytes,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "trtexec": trtexec_command(self)}


# --- planning (no TensorRT needed) ----------------------------------------------------------


def read_model(path: Path) -> tuple[ModelCard, str, list[int | str]]:
    """Model card, input name and input dims (``'batch'`` for a dynamic batch) of an ONNX file."""
    import onnx

    if not path.is_file():
        raise NasdeployError(f"ONNX model not found: {path}")
    info = read_onnx_card(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise NasdeployError(f"{path} has {len(inputs)} inputs; expected one NCHW image input")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
        raise NasdeployError(f"{path}: input shape {dims} is not (batch, 3, H, W)")
    return info, inputs[0].name, dims


def profile_shapes(input_name: str, dims: list[int | str], min_batch: int | None,
                   opt_batch: int | None, max_batch: int | None) -> Profile:
    """min/opt/max shapes; a fixed-batch model only allows its own batch size."""
    chw = tuple(int(d) for d in dims[1:])
    if isinstance(dims[0], int) and dims[0] > 0:
        fixed = dims[0]
        asked = {b for b in (min_batch, opt_batch, max_batch) if b is not None}
        if asked - {fixed}:
            raise NasdeployError(f"the model has a fixed batch of {fixed}; re-export with --batch dynamic "
                                 "to build a profile over several batch sizes")
        shape = (fixed, *chw)
        return Profile(input_name, shape, shape, shape, dynamic=False)  # type: ignore[arg-type]
    low = min_batch or 1
    high = max_batch or max(low, DEFAULT_MAX_BATCH)
    opt = opt_batch or min(max(low, DEFAULT_OPT_BATCH), high)
    if not 1 <= low <= opt <= high:
        raise NasdeployError(f"batch profile must satisfy 1 <= min <= opt <= max, got {low}/{opt}/{high}")
    if high > MAX_BATCH:
        raise NasdeployError(f"--max-batch must be at most {MAX_BATCH}, got {high}")
    return Profile(input_name, (low, *chw), (opt, *chw), (high, *chw), dynamic=True)  # type: ignore[arg-type]


def choose_onnx(path: Path, info: ModelCard, fp16: bool, int8: bool) -> tuple[Path, str, bool]:
    """The ONNX file to build from for the requested precision: (path, precision, must derive).

    ``--fp16`` on an fp32 model uses (or derives) ``<stem>.fp16.onnx``; ``--int8`` needs a
    QDQ model, given directly or as ``<stem>.int8.onnx`` from ``export.onnx --int8``.
    """
    if fp16 and int8:
        raise NasdeployError("choose one of --fp16 and --int8 (an engine's precision comes from one model)")
    have = info.precision if info.precision in PRECISIONS else "fp32"
    want = "fp16" if fp16 else "int8" if int8 else have
    if want == have:
        _check_int8_form(path, want)
        return path, want, False
    if have != "fp32":
        raise NasdeployError(f"{path.name} is an {have} model; --{want} needs the fp32 model.onnx or "
                             f"its .{want}.onnx sibling")
    sibling = variant_path(path, want)
    if sibling.is_file():
        _check_int8_form(sibling, want)
        return sibling, want, False
    if want == "int8":
        raise NasdeployError(f"no {sibling.name} next to {path.name}: quantize first with "
                             "`python -m export.onnx <checkpoint> --int8 --calib-data <dataset>`")
    return sibling, want, True


def _check_int8_form(path: Path, precision: str) -> None:
    """TensorRT builds int8 only from QDQ graphs: refuse ONNX Runtime's CPU (QOperator) form."""
    if precision != "int8":
        return
    from export.quantize import int8_form

    if int8_form(path) == "cpu":
        raise NasdeployError(f"{path.name} is ONNX Runtime's CPU int8 form (QOperator), which TensorRT "
                             "cannot build; export with `python -m export.onnx ... --int8 --int8-form "
                             "tensorrt`")


def plan_build(config: TrtConfig) -> BuildPlan:
    """Check the arguments and the model; decide the ONNX file, engine path and profile."""
    if config.workspace_bytes < MIB:
        raise NasdeployError(f"--workspace must be at least 1 MiB, got {config.workspace_bytes} bytes")
    given = Path(config.onnx).expanduser()
    info, name, dims = read_model(given)
    onnx_path, precision, derive = choose_onnx(given, info, config.fp16, config.int8)
    if not derive and onnx_path != given:
        info, name, dims = read_model(onnx_path)
    profile = profile_shapes(name, dims, config.min_batch, config.opt_batch, config.max_batch)
    engine = _engine_path(config.out, onnx_path)
    cache = Path(config.timing_cache).expanduser() if config.timing_cache else None
    return BuildPlan(onnx_path, engine, replace(info, precision=precision), precision, profile,
                     config.workspace_bytes, cache, [onnx_path.name] if derive else [],
                     given if derive else None)


def _engine_path(out: str | None, onnx_path: Path) -> Path:
    """``--out`` (engine file or folder), else ``<onnx stem>.engine`` beside the ONNX."""
    if out:
        target = Path(out).expanduser()
        if target.suffix in ENGINE_SUFFIXES:
            return target
        return target / f"{onnx_path.stem}{ENGINE_SUFFIX}"
    return engine_path(onnx_path)


def size_text(size: int) -> str:
    """Bytes as people read them: ``1 GiB``, ``1536 MiB``, ``1.50 MiB``."""
    if size % (1 << 30) == 0:
        return f"{size >> 30} GiB"
    if size % MIB == 0:
        return f"{size >> 20} MiB"
    return f"{size / MIB:.2f} MiB"


def _trtexec_size(size: int) -> str:
    """trtexec's pool size: whole MiB as ``N M``, anything else in KiB (rounded up)."""
    return f"{size >> 20}M" if size % MIB == 0 else f"{-(-size // 1024)}K"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(plan: BuildPlan) -> str:
    """The equivalent ``trtexec`` command line (``--stronglyTyped`` is a no-op on 11.x)."""
    args = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={plan.engine}", "--stronglyTyped"]
    if plan.profile.dynamic:
        name = plan.profile.input_name
        args += [f"--minShapes={name}:{_shape_text(plan.profile.min)}",
                 f"--optShapes={name}:{_shape_text(plan.profile.opt)}",
                 f"--maxShapes={name}:{_shape_text(plan.profile.max)}"]
    args.append(f"--memPoolSize=workspace:{_trtexec_size(plan.workspace_bytes)}")
    if plan.timing_cache is not None:
        args.append(f"--timingCacheFile={plan.timing_cache}")
    return " ".join(shlex.quote(a) for a in args)


def describe_plan(plan: BuildPlan) -> list[str]:
    """Human-readable lines: what will be built from what."""
    p = plan.profile
    batch = (f"batch {p.min[0]}/{p.opt[0]}/{p.max[0]} (min/opt/max)" if p.dynamic
             else f"fixed batch {p.min[0]}")
    derived = f" (derived on the CPU from {plan.source.name})" if plan.source else ""
    return [f"model:     {plan.onnx}{derived}",
            f"precision: {plan.precision} (from the model; strongly typed network)",
            f"profile:   {p.input_name} {_shape_text(p.opt)}, {batch}",
            f"workspace: {size_text(plan.workspace_bytes)}" + (f", timing cache {plan.timing_cache}"
                                                      if plan.timing_cache else ""),
            f"engine:    {plan.engine} (+ {plan.sidecar.name})"]


# --- TensorRT ------------------------------------------------------------------------------


def missing_requirement() -> str | None:
    """Why an engine cannot be built here (``None`` when TensorRT and a GPU are usable)."""
    try:
        import tensorrt as trt
    except Exception:
        return f"TensorRT is not installed (the `tensorrt` Python package): {INSTALL_HINT}"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception:
        builder = None
    if builder is None:
        return f"TensorRT {trt.__version__} is installed but no CUDA GPU is usable here: {INSTALL_HINT}"
    return None


def derive_fp16(plan: BuildPlan) -> dict[str, Any]:
    """Write the fp16 ONNX the plan consumes from its fp32 source, atomically.

    Goes through the same checks as ``export.onnx --fp16`` (onnx.checker, metadata,
    agreement with the fp32 model on seeded inputs); returns that comparison.
    """
    if plan.source is None:
        raise NasdeployError(f"{plan.onnx.name} is not derived from another model")
    fixed = None if plan.profile.dynamic else plan.profile.min[0]
    with atomic_path(plan.onnx) as tmp:
        return make_fp16(plan.source, tmp, plan.info, random_inputs(plan.info), fixed)


def build_engine(config: TrtConfig) -> tuple[BuildPlan, dict[str, Any] | None]:
    """Plan, then (unless ``dry_run``) build and save the engine and its JSON sidecar."""
    plan = plan_build(config)
    if config.dry_run:
        return plan, None
    problem = missing_requirement()
    if problem:
        raise NasdeployError(problem)
    if plan.source is not None:
        derive_fp16(plan)
    import tensorrt as trt

    engine_bytes, cache_bytes = _build_serialized(trt, plan)
    sidecar = _sidecar(trt, plan, len(engine_bytes))
    atomic_write_bytes(plan.engine, engine_bytes)
    atomic_write_text(plan.sidecar, json.dumps(sidecar, indent=2) + "\n")
    if plan.timing_cache is not None and cache_bytes:
        atomic_write_bytes(plan.timing_cache, cache_bytes)
    return plan, sidecar


def _build_serialized(trt: Any, plan: BuildPlan) -> tuple[bytes, bytes]:
    """Parse the ONNX into a strongly typed network and build it with the plan's profile."""
    builder, network, _ = parse_strongly_typed(trt, plan.onnx, trt.Logger.WARNING)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.profile.input_name, plan.profile.min, plan.profile.opt, plan.profile.max)
    config.add_optimization_profile(profile)
    cache_data = plan.timing_cache.read_bytes() if plan.timing_cache and plan.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_data)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise NasdeployError(f"TensorRT failed to build an engine from {plan.onnx.name} (see the log above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def gpu_name() -> str:
    """Name of CUDA device 0, from cuda-python or torch; ``unknown`` if neither can tell."""
    try:
        cudart = import_cudart()
    except ImportError:
        cudart = None
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "unknown"


def _sidecar(trt: Any, plan: BuildPlan, size: int) -> dict[str, Any]:
    """The ``model.engine.json`` written next to the engine (``serve`` reads ``model_info``)."""
    return {
        "format": SIDECAR_FORMAT, "version": 1,
        "model_info": plan.info.to_dict(),
        "build": {"onnx": plan.onnx.name, "onnx_sha256": hashlib.sha256(plan.onnx.read_bytes()).hexdigest(),
                  "precision": plan.precision, "strongly_typed": True,
                  "profile": asdict(plan.profile), "workspace_bytes": plan.workspace_bytes,
                  "timing_cache": str(plan.timing_cache) if plan.timing_cache else None},
        "tensorrt_version": trt.__version__, "gpu": gpu_name(), "engine_bytes": size,
        "trtexec": trtexec_command(plan),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
