"""Final training of a genotype or a baseline (the library behind ``python -m search.train``).

Trains the scaled network of a genotype, or a hand-designed baseline
(:mod:`search.nn.baselines`: ``architecture`` set, no genotype), on the full training split
with :mod:`search.training.loop`, checkpoints atomically after every epoch (weights,
optimizer and scheduler state, history) so ``--resume`` continues from the last finished epoch, writes
``train_log.jsonl`` and reports the accuracy on the held-out test split at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.core.atomic import atomic_write_text, unique_path
from search.core.errors import NasdeployError
from search.core.rundir import CHECKPOINT_NAME, TRAIN_LOG_NAME
from search.data.datasets import DataBundle, load_dataset
from search.nn.checkpoint import build_from_card, load_weights, read_checkpoint, save_checkpoint
from search.nn.cost import count_params
from search.nn.device import resolve_device
from search.nn.model import build_model
from search.space.card import ModelCard
from search.space.genotype import Genotype
from search.space.scale import check_size, parse_scale, scale_summary
from search.training import distributed
from search.training.loop import (
    DivergedError,
    TrainConfig,
    evaluate_accuracy,
    make_optimizer,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
)


@dataclass
class FinalTrainSettings:
    """Everything one final-training run needs (what the CLI builds from its flags).

    ``genotype`` may be ``None`` with ``resume`` (the checkpoint holds it) or with an
    ``architecture`` (a baseline; ``variant`` and ``auxiliary`` do not apply to it).
    """

    genotype: Genotype | None
    name: str = "genotype"
    variant: str = "cifar"
    image_size: int | None = None
    dataset: str = "cifar10"
    data_dir: str | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20))
    auxiliary: bool = True
    out: str | None = None
    resume: bool = False
    train_size: int | None = None
    val_fraction: float = 0.0
    architecture: str | None = None
    width_mult: float | None = None


@dataclass(frozen=True)
class FinalTrainResult:
    """Where the run went and how it scored."""

    out_dir: Path
    checkpoint: Path
    epochs: int
    train_accuracy: float
    test_accuracy: float | None
    val_accuracy: float | None


CHANCE_MARGIN = 1.5
"""Final accuracy below this multiple of chance (1 / classes) gets a warning."""


def default_out_dir(name: str, root: str = "runs") -> Path:
    """``runs/train-<name>-<timestamp>`` (unique)."""
    return unique_path(Path(root) / f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def near_chance(accuracy: float | None, num_classes: int) -> str | None:
    """A warning when ``accuracy`` is within :data:`CHANCE_MARGIN` of chance, else ``None``."""
    chance = 1.0 / max(num_classes, 1)
    if accuracy is None or num_classes < 2 or accuracy >= CHANCE_MARGIN * chance:
        return None
    return (f"warning: accuracy {accuracy:.4f} is near chance ({chance:.3f} for {num_classes} classes): "
            "the model has not learned yet; train longer (--epochs) or check --lr and the data")


def train_genotype(settings: FinalTrainSettings, *, progress: bool = True,
                   log: Any = print) -> FinalTrainResult:
    """Train (or resume) a final model; see the module docstring.

    ``log`` receives the resolved settings before training starts, one line per epoch and
    a near-chance warning at the end.

    Raises:
        NasdeployError: bad genotype, variant, dataset or output directory; a network beyond
            the limits of :mod:`search.space.scale`; a diverged run. A run that fails before
            its first epoch is saved leaves no directory behind.
    """
    out_dir = _check_out(settings)
    ckpt_path = out_dir / CHECKPOINT_NAME
    state = read_checkpoint(ckpt_path) if settings.resume else None
    if state is not None:
        settings = _settings_from_checkpoint(settings, state)
    genotype = settings.genotype
    baseline = settings.architecture is not None
    if genotype is None and not baseline:
        raise NasdeployError("no genotype to train: name a run directory, genotype file or built-in")
    config = settings.train
    if baseline:
        _check_baseline(settings)  # name, width and the drop-path flag before loading data
    dist, device = distributed.setup(resolve_device(config.device))
    if not dist.main:
        log = _silent  # rank 0 speaks for the job
    if not baseline:
        parse_scale(settings.variant, settings.image_size)  # N, F and the size in range before loading
    data = load_dataset(settings.dataset, settings.data_dir, image_size=settings.image_size,
                        val_fraction=settings.val_fraction, train_size=settings.train_size,
                        seed=config.seed)
    scale = None
    if baseline:
        spec = ModelCard(architecture=settings.architecture, width_mult=settings.width_mult,
                         image_size=data.image_size, num_classes=data.num_classes,
                         class_names=data.class_names, mean=data.mean, std=data.std, dataset=data.name)
    else:
        scale = parse_scale(settings.variant, data.image_size)
        check_size(scale, genotype, data.num_classes)  # before the network is allocated
        spec = ModelCard(genotype=genotype, scale=scale.label, image_size=data.image_size,
                         num_classes=data.num_classes, class_names=data.class_names,
                         mean=data.mean, std=data.std, auxiliary=settings.auxiliary,
                         dataset=data.name)
    created = not out_dir.exists()
    distributed.barrier(dist)  # every rank has checked the directory before rank 0 creates it
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)  # only once every input has been checked
    try:
        return _train(settings, genotype, data, scale, spec, state, device, out_dir,
                      progress and dist.main, log, dist)
    except Exception as exc:
        if created and dist.main:
            _remove_unused(out_dir)
        if _out_of_memory(exc):
            what = settings.architecture if scale is None else scale.label
            raise NasdeployError(f"out of memory training {what} at {data.image_size} px with batch "
                                 f"{config.batch_size} on {device}: lower --batch, --image-size or the "
                                 "variant") from None
        raise
    finally:
        distributed.teardown(dist)


def _check_baseline(settings: FinalTrainSettings) -> None:
    """A baseline's name, width multiplier and image size are valid; drop-path does not apply."""
    from search.space.baselines import check_width, get_baseline

    entry = get_baseline(str(settings.architecture))
    settings.architecture = entry.name
    check_width(entry, settings.width_mult)
    if settings.image_size is not None and settings.image_size < entry.min_size:
        raise NasdeployError(f"{entry.name} needs inputs of at least {entry.min_size} px, got "
                             f"{settings.image_size}")
    if settings.train.drop_path_prob > 0:
        raise NasdeployError("--drop-path drops the paths of NASNet cells; a baseline has none")


def _silent(*_: Any) -> None:
    """The log of ranks other than 0."""


def _out_of_memory(exc: BaseException) -> bool:
    """A failed allocation (CUDA or CPU), which torch reports as several kinds of error."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _remove_unused(out_dir: Path) -> None:
    """Remove a training directory this run created if no epoch finished (no checkpoint)."""
    names = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    if CHECKPOINT_NAME not in names and names <= {TRAIN_LOG_NAME}:
        shutil.rmtree(out_dir, ignore_errors=True)


def _train(settings: FinalTrainSettings, genotype: Genotype | None, data: DataBundle, scale: Any,
           spec: ModelCard, state: dict[str, Any] | None, device: torch.device, out_dir: Path,
           progress: bool, log: Any, dist: distributed.Dist | None = None) -> FinalTrainResult:
    config = settings.train
    ckpt_path = out_dir / CHECKPOINT_NAME
    torch.manual_seed(config.seed)
    if genotype is None:
        model = build_from_card(spec).to(device)
    else:
        model = build_model(genotype, scale, num_classes=data.num_classes,
                            image_size=data.image_size, auxiliary=settings.auxiliary,
                            drop_path_prob=config.drop_path_prob).to(device)
    dist = dist or distributed.Dist()
    resumed_at = len(state["training"]["history"]) if state is not None else 0
    log(_resolved_line(settings, data, scale, model, device, out_dir, resumed_at, dist))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch(data.train, config.batch_size, dist.world))
    history: list[dict[str, Any]] = []
    if state is not None:
        history = _restore(state, model, optimizer, scheduler)
    trained = distributed.wrap(model, dist, device)  # the same module, synchronised over ranks
    for epoch in range(len(history), config.epochs):
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # drop-path RNG, resumable
        history.append(_run_epoch(trained, model, data, optimizer, scheduler, config, epoch, device,
                                  progress, dist))
        if dist.main:
            training = _training_state(settings, optimizer, scheduler, history)
            save_checkpoint(ckpt_path, model, spec, metrics=_metrics(history), training=training)
            _write_log(out_dir / TRAIN_LOG_NAME, history)
        distributed.barrier(dist)
        log(_epoch_line(history[-1], config.epochs))
    test_accuracy = evaluate_accuracy(model, data.test, device) if data.test else None
    metrics = {**_metrics(history), "test_accuracy": test_accuracy}
    warning = near_chance(test_accuracy if test_accuracy is not None else history[-1]["train_accuracy"],
                          data.num_classes)
    if warning:
        log(warning)
    if dist.main:
        save_checkpoint(ckpt_path, model, spec, metrics=metrics,
                        training=_training_state(settings, optimizer, scheduler, history))
    distributed.barrier(dist)
    return FinalTrainResult(out_dir, ckpt_path, config.epochs, history[-1]["train_accuracy"],
                            test_accuracy, history[-1].get("val_accuracy"))


def _resolved_line(settings: FinalTrainSettings, data: DataBundle, scale: Any, model: torch.nn.Module,
                   device: torch.device, out_dir: Path, resumed_at: int,
                   dist: distributed.Dist | None = None) -> str:
    """What is about to be trained (two lines): no guessing which model runs."""
    config = settings.train
    start = f", resuming after epoch {resumed_at}" if resumed_at else ""
    if dist is not None and dist.enabled:
        start += (f"; {dist.world} processes (torchrun), batch {config.batch_size} each, "
                  f"{config.batch_size * dist.world} in all")
    if settings.architecture is not None:
        from search.space.baselines import describe

        what = f"baseline {describe(settings.architecture, settings.width_mult)} at {data.image_size} px"
    else:
        what = scale_summary(scale, settings.genotype)
    return (f"training {settings.name}: {what}; "
            f"{count_params(model) / 1e6:.3f} M params\n"
            f"data {data.name}: {data.num_classes} classes, {len(data.train)} training images at "
            f"{data.image_size} px; {config.epochs} epochs, batch {config.batch_size}, lr {config.lr:g}, "
            f"device {device}{start} -> {out_dir}")


def _check_out(settings: FinalTrainSettings) -> Path:
    """The run directory (not created yet); refuses to overwrite or to resume nothing."""
    if settings.resume and not settings.out:
        raise NasdeployError("--resume needs the training directory to continue (--resume DIR)")
    out_dir = Path(settings.out) if settings.out else default_out_dir(settings.name)
    settings.out = str(out_dir)
    if settings.resume and not (out_dir / CHECKPOINT_NAME).is_file():
        raise NasdeployError(f"nothing to resume: {out_dir / CHECKPOINT_NAME} does not exist")
    if not settings.resume and (out_dir / CHECKPOINT_NAME).exists():
        raise NasdeployError(f"{out_dir} already holds {CHECKPOINT_NAME}; continue it with "
                             f"--resume {out_dir} or choose another --out")
    return out_dir


def _settings_from_checkpoint(settings: FinalTrainSettings, state: dict[str, Any]) -> FinalTrainSettings:
    """On resume the run's own settings win; a genotype given must be the one it trained."""
    saved = dict(state.get("training", {}).get("settings") or {})
    if not saved:
        raise NasdeployError(f"{settings.out}: checkpoint has no training state to resume")
    spec = state["spec"]
    architecture = spec.get("architecture") if isinstance(spec, dict) else None
    trained = None if architecture else Genotype.from_dict(spec["genotype"])
    if settings.architecture is not None and settings.architecture != architecture:
        raise NasdeployError(f"{settings.out} was not trained as {settings.architecture}")
    if settings.genotype is not None and (trained is None
                                          or settings.genotype.to_json() != trained.to_json()):
        raise NasdeployError(f"{settings.out} was trained on a different genotype than {settings.name}")
    saved.pop("genotype", None)
    saved.setdefault("name", Path(str(settings.out)).name)
    restored = FinalTrainSettings(genotype=trained, **{**saved, "train": TrainConfig(**saved["train"])})
    restored.train.device = settings.train.device
    restored.out, restored.resume = settings.out, True
    return restored


def _restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> list[dict[str, Any]]:
    load_weights(model, state["state_dict"])
    training = state["training"]
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    return list(training["history"])


def _training_state(settings: FinalTrainSettings, optimizer: torch.optim.Optimizer,
                    scheduler: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    saved = dataclasses.asdict(settings)
    saved.pop("resume")
    saved.pop("genotype")  # the checkpoint's card holds it
    return {"epoch": len(history), "epochs": settings.train.epochs, "settings": saved,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history}


def _run_epoch(model: torch.nn.Module, network: torch.nn.Module, data: DataBundle,
               optimizer: torch.optim.Optimizer, scheduler: Any, config: TrainConfig, epoch: int,
               device: torch.device, progress: bool, dist: distributed.Dist) -> dict[str, Any]:
    """One epoch of ``model`` (``network`` itself, or it wrapped for data parallelism); loss and
    accuracy are over every rank's images, the validation accuracy of ``network``."""
    from tqdm import tqdm

    start = time.perf_counter()
    bar = tqdm(total=len(data.train), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
               disable=not progress, leave=False, file=sys.stderr)

    running = {"loss": 0.0, "seen": 0}

    def on_batch(n: int, loss: float, accuracy: float) -> None:
        running["loss"] += loss * n
        running["seen"] += n
        bar.update(n)
        bar.set_postfix(loss=f"{running['loss'] / running['seen']:.3f}", acc=f"{accuracy:.3f}")

    try:
        stats = train_epoch(model, data.train, optimizer, scheduler, config, epoch, device,
                            on_batch, shard=dist.shard)
    except DivergedError as exc:
        raise NasdeployError(f"training diverged ({exc}); lower --lr or raise --batch-size"
                             ) from None
    finally:
        bar.close()
    loss, correct, seen = distributed.sum_over_ranks(
        [stats.loss * stats.samples, stats.accuracy * stats.samples, float(stats.samples)], dist, device)
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(loss / max(seen, 1), 5),
                           "train_accuracy": round(correct / max(seen, 1), 5), "lr": stats.lr}
    if len(data.val):
        row["val_accuracy"] = round(evaluate_accuracy(network, data.val, device), 5)
    row["time_s"] = round(time.perf_counter() - start, 2)
    return row


def _metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1]
    keys = ("train_loss", "train_accuracy", "val_accuracy")
    return {"epochs": last["epoch"], **{k: last[k] for k in keys if k in last}}


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    val = f" val_acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
    return (f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f} "
            f"train_acc {row['train_accuracy']:.4f}{val} ({row['time_s']:.1f}s)")
