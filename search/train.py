"""Final training of a genotype: ``python -m search.train GENOTYPE``.

Trains the scaled network on the full training split with :mod:`search.training.loop`,
checkpoints atomically after every epoch (weights, optimizer and scheduler state,
history) so ``--resume`` continues from the last finished epoch, writes
``train_log.jsonl`` and reports the accuracy on the held-out test split at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.core.atomic import atomic_write_text, unique_path
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from search.core.rundir import CHECKPOINT_NAME, TRAIN_LOG_NAME
from search.data.datasets import DATASETS, DataBundle, load_dataset
from search.nn.device import resolve_device
from search.space.genotype import REFERENCE_GENOTYPES, Genotype, load_genotype
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
    """Everything one final-training run needs (what the CLI builds from its flags)."""

    genotype: str
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


@dataclass(frozen=True)
class FinalTrainResult:
    """Where the run went and how it scored."""

    out_dir: Path
    checkpoint: Path
    epochs: int
    train_accuracy: float
    test_accuracy: float | None
    val_accuracy: float | None


def default_out_dir(genotype_arg: str, root: str = "runs") -> Path:
    """``runs/train-<genotype-name>-<timestamp>`` (unique)."""
    path = Path(genotype_arg)
    name = genotype_arg if genotype_arg in REFERENCE_GENOTYPES else path.stem
    if name == "genotype" and path.parent.name:
        name = path.parent.name  # runs/<search>/genotype.json -> the search's name
    return unique_path(Path(root) / f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def train_genotype(settings: FinalTrainSettings, *, progress: bool = True) -> FinalTrainResult:
    """Train (or resume) a final model; see the module docstring.

    Raises:
        NasdeployError: bad genotype, variant, dataset or output directory; a diverged run.
    """
    from search.nn.checkpoint import read_checkpoint, save_checkpoint
    from search.nn.model import build_model
    from search.space.card import ModelCard
    from search.space.scale import parse_scale

    genotype = load_genotype(settings.genotype)
    out_dir = _check_out(settings)
    ckpt_path = out_dir / CHECKPOINT_NAME
    state = read_checkpoint(ckpt_path) if settings.resume else None
    if state is not None:
        settings = _settings_from_checkpoint(settings, genotype, state)
    config = settings.train
    device = resolve_device(config.device)
    data = load_dataset(settings.dataset, settings.data_dir, image_size=settings.image_size,
                        val_fraction=settings.val_fraction, train_size=settings.train_size,
                        seed=config.seed)
    scale = parse_scale(settings.variant, data.image_size)
    spec = ModelCard(genotype=genotype, scale=scale.label, image_size=data.image_size,
                     num_classes=data.num_classes, class_names=data.class_names,
                     mean=data.mean, std=data.std, auxiliary=settings.auxiliary,
                     dataset=data.name)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every input has been checked
    torch.manual_seed(config.seed)
    model = build_model(genotype, scale, num_classes=data.num_classes,
                        image_size=data.image_size, auxiliary=settings.auxiliary,
                        drop_path_prob=config.drop_path_prob).to(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch(data.train, config.batch_size))
    history: list[dict[str, Any]] = []
    if state is not None:
        history = _restore(state, model, optimizer, scheduler)
    for epoch in range(len(history), config.epochs):
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # drop-path RNG, resumable
        history.append(_run_epoch(model, data, optimizer, scheduler, config, epoch, device,
                                  progress))
        training = _training_state(settings, optimizer, scheduler, history)
        save_checkpoint(ckpt_path, model, spec, metrics=_metrics(history), training=training)
        _write_log(out_dir / TRAIN_LOG_NAME, history)
        _print_epoch(history[-1], config.epochs)
    test_accuracy = evaluate_accuracy(model, data.test, device) if data.test else None
    metrics = {**_metrics(history), "test_accuracy": test_accuracy}
    save_checkpoint(ckpt_path, model, spec, metrics=metrics,
                    training=_training_state(settings, optimizer, scheduler, history))
    return FinalTrainResult(out_dir, ckpt_path, config.epochs, history[-1]["train_accuracy"],
                            test_accuracy, history[-1].get("val_accuracy"))


def _check_out(settings: FinalTrainSettings) -> Path:
    """The run directory (not created yet); refuses to overwrite or to resume nothing."""
    if settings.resume and not settings.out:
        raise NasdeployError("--resume needs --out DIR pointing at the run to continue")
    out_dir = Path(settings.out) if settings.out else default_out_dir(settings.genotype)
    settings.out = str(out_dir)
    if settings.resume and not (out_dir / CHECKPOINT_NAME).is_file():
        raise NasdeployError(f"nothing to resume: {out_dir / CHECKPOINT_NAME} does not exist")
    if not settings.resume and (out_dir / CHECKPOINT_NAME).exists():
        raise NasdeployError(f"{out_dir} already holds {CHECKPOINT_NAME}; continue it with "
                             "--resume or choose another --out")
    return out_dir


def _settings_from_checkpoint(settings: FinalTrainSettings, genotype: Genotype,
                              state: dict[str, Any]) -> FinalTrainSettings:
    """On resume the run's own settings win; the genotype must be the one it trained."""
    saved = state.get("training", {}).get("settings")
    if not saved:
        raise NasdeployError(f"{settings.out}: checkpoint has no training state to resume")
    if Genotype.from_dict(state["spec"]["genotype"]).to_json() != genotype.to_json():
        raise NasdeployError(f"{settings.out} was trained on a different genotype than "
                             f"{settings.genotype}")
    restored = FinalTrainSettings(**{**saved, "train": TrainConfig(**saved["train"])})
    restored.train.device = settings.train.device
    restored.out, restored.resume = settings.out, True
    return restored


def _restore(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> list[dict[str, Any]]:
    model.load_state_dict(state["state_dict"])
    training = state["training"]
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    return list(training["history"])


def _training_state(settings: FinalTrainSettings, optimizer: torch.optim.Optimizer,
                    scheduler: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    saved = dataclasses.asdict(settings)
    saved.pop("resume")
    return {"epoch": len(history), "epochs": settings.train.epochs, "settings": saved,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history}


def _run_epoch(model: torch.nn.Module, data: DataBundle, optimizer: torch.optim.Optimizer,
               scheduler: Any, config: TrainConfig, epoch: int, device: torch.device,
               progress: bool) -> dict[str, Any]:
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
                            on_batch)
    except DivergedError as exc:
        raise NasdeployError(f"training diverged ({exc}); lower --lr or raise --batch-size"
                             ) from None
    finally:
        bar.close()
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(stats.loss, 5),
                           "train_accuracy": round(stats.accuracy, 5), "lr": stats.lr}
    if len(data.val):
        row["val_accuracy"] = round(evaluate_accuracy(model, data.val, device), 5)
    row["time_s"] = round(time.perf_counter() - start, 2)
    return row


def _metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1]
    keys = ("train_loss", "train_accuracy", "val_accuracy")
    return {"epochs": last["epoch"], **{k: last[k] for k in keys if k in last}}


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in history))


def _print_epoch(row: dict[str, Any], epochs: int) -> None:
    val = f" val_acc {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
    print(f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f} "
          f"train_acc {row['train_accuracy']:.4f}{val} ({row['time_s']:.1f}s)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m search.train`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m search.train",
                                description="Train a genotype at a deployment scale and "
                                            "report held-out test accuracy.")
    p.add_argument("genotype", help="genotype JSON path or built-in name (nasnet-a, lite)")
    p.add_argument("--variant", default="cifar", help="cifar, mobile, large or N@F (cifar)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the dataset's, digits 16, CIFAR 32)")
    p.add_argument("--dataset", default="cifar10", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="dataset folder or .npz (see docs)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="initial SGD lr (cosine to 0)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=3e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--drop-path", type=float, default=0.0,
                   help="final ScheduledDropPath probability (e.g. 0.2-0.6 for long runs)")
    p.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=True,
                   help="auxiliary head and its 0.4-weighted loss (default on)")
    p.add_argument("--aux-weight", type=float, default=0.4)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--train-size", type=int, default=None, help="use at most this many images")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this share of the training set to log val accuracy")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default=None, help="run directory (default runs/train-NAME-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def settings_from_args(args: argparse.Namespace) -> FinalTrainSettings:
    """Turn parsed flags into :class:`FinalTrainSettings` (validating the numbers)."""
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        momentum=args.momentum, weight_decay=args.weight_decay,
                        label_smoothing=args.label_smoothing, aux_weight=args.aux_weight,
                        grad_clip=args.grad_clip, drop_path_prob=args.drop_path,
                        device=args.device, seed=args.seed)
    return FinalTrainSettings(genotype=args.genotype, variant=args.variant,
                              image_size=args.image_size, dataset=args.dataset,
                              data_dir=args.data_dir, train=train, auxiliary=args.auxiliary,
                              out=args.out, resume=args.resume, train_size=args.train_size,
                              val_fraction=args.val_fraction)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m search.train``."""
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = settings_from_args(args)
        result = train_genotype(settings, progress=not args.no_progress)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    except KeyboardInterrupt:
        out = settings.out if settings is not None else args.out
        print(f"interrupted; continue with: python -m search.train {args.genotype} --resume "
              f"--out {out}", file=sys.stderr)
        return 130
    test = "n/a (no test split)" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    print(f"test accuracy {test}; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
