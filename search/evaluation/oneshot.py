"""One-shot evaluation: score candidates with weights inherited from one weight-sharing supernet.

The supernet (:class:`search.nn.supernet.Supernet`) is trained once per run with uniform
single-path sampling (SPOS, Guo et al. 2020): every step trains the path of one uniformly
random genotype of the space. A candidate is then scored in a fraction of a second
instead of being trained: its path with the inherited weights, BatchNorm statistics
recomputed for that path on a few fixed training batches, top-1 accuracy on a fixed
validation subset.

- Training is resumable: ``supernet.pt`` is written atomically every
  ``checkpoint_every_s`` seconds and at the end, with everything the next step depends on
  (weights, optimizer, schedule, the sampling generator, torch's RNG, the step and the
  seconds trained), so a run killed with ``kill -9`` resumes at the saved step and ends
  with the same weights as an uninterrupted run (on the CPU).
- A checkpoint of another search space, dataset, class count, image size, scale or
  training setting, an unreadable or foreign file: one-line :class:`NasdeployError`.
- Scoring never raises for a candidate of the space: a NaN/inf output scores 0 with
  status ``"diverged"``, any other failure 0 with ``"failed"``, each with a one-line
  error. A genotype outside the space (another block count, an explicit ``concat``) is a
  one-line :class:`NasdeployError`. The global torch RNG is left untouched.

Measured on the 2-core CPU here (both cores shared with two other benchmark processes),
one thread, 5-block space, defaults of :data:`SUPERNET_DEFAULTS`: see the constants'
comments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TextIO

import torch
from torch import nn
from torch.nn import functional as F

from search.core.atomic import atomic_path
from search.core.errors import NasdeployError, one_line
from search.data.datasets import DataBundle, ImageTensorDataset
from search.evaluation.proxy import AccuracyResult, _torch_threads
from search.nn.device import resolve_device
from search.nn.supernet import Supernet, batchnorms, finite, num_steps, sample_genotype
from search.space.genotype import Genotype
from search.space.scale import Scale, estimate_size, parse_scale
from search.training.loop import MAX_EPOCHS, MAX_LR, MAX_SEED, epoch_generator

SUPERNET_FORMAT = "nasdeploy-supernet"
SUPERNET_VERSION = 2
"""Checkpoint format version; bump it whenever the supernet's structure, initialisation or
training changes meaning (e.g. :data:`search.nn.supernet.ADD_SCALE`), so old files are refused."""


@dataclass(frozen=True)
class SupernetSettings:
    """How the supernet is trained and how candidates are scored with it.

    Training (must match a checkpoint being resumed or loaded; see :attr:`TRAINING`):

    Attributes:
        scale: supernet size, ``N@F`` or a variant name (every cell position holds all ops).
        image_size: input side; ``None`` uses the dataset's size (else images are resized).
        epochs: passes over the training images (each step trains one random path).
        train_size: train on at most this many images (seeded subset); ``None``: all.
        batch_size: SGD batch size.
        lr: initial learning rate, cosine-decayed to zero over the whole run.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        grad_clip: gradient-norm clip (0: none).
        seed: weight init, data order, augmentation, path sampling and scoring subsets.

    Scoring and running (free to change between sessions):

    Attributes:
        bn_batches: training batches (no augmentation, fixed) that recompute a
            candidate's BatchNorm statistics before it is scored.
        bn_batch_size: images per recalibration batch.
        val_size: score on at most this many validation images (a fixed seeded subset).
        cpu_threads: torch intra-op threads on the CPU while training and scoring
            (``None`` keeps torch's setting); one thread is fastest for these small
            networks and leaves the other core to the rest of the search.
        device: ``auto``, ``cpu`` or ``cuda`` (bit-identical resume is guaranteed on the CPU).
        checkpoint_every_s: write ``supernet.pt`` at least this often while training
            (and always at the end).
    """

    scale: str = "1@96"
    image_size: int | None = None
    epochs: int = 30
    train_size: int | None = None
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    seed: int = 0
    bn_batches: int = 2
    bn_batch_size: int = 128
    val_size: int | None = 500
    cpu_threads: int | None = 1
    device: str = "auto"
    checkpoint_every_s: float = 60.0

    TRAINING: ClassVar[tuple[str, ...]] = ("scale", "image_size", "epochs", "train_size", "batch_size",
                                           "lr", "momentum", "weight_decay", "grad_clip", "seed")
    """Fields that define the trained supernet (a checkpoint must agree on them)."""

    def __post_init__(self) -> None:
        parse_scale(self.scale, self.image_size)
        positive = ("epochs", "batch_size", "bn_batches", "bn_batch_size")
        for name in (*positive, "train_size", "val_size", "cpu_threads"):
            value = getattr(self, name)
            if value is None and name not in positive:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NasdeployError(f"supernet {name.replace('_', ' ')} must be a whole number of at "
                                     f"least 1, got {value!r}"[:160])
        if self.epochs > MAX_EPOCHS:
            raise NasdeployError(f"supernet epochs must be at most {MAX_EPOCHS}, got {self.epochs}"[:160])
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise NasdeployError(f"supernet learning rate must be above 0 and at most {MAX_LR:g}, "
                                 f"got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise NasdeployError(f"supernet momentum must be in [0, 1), got {self.momentum}")
        for name in ("weight_decay", "grad_clip", "checkpoint_every_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise NasdeployError(f"supernet {name.replace('_', ' ')} must be a finite number >= 0, "
                                     f"got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise NasdeployError(f"seed must be from 0 to {MAX_SEED}, got {self.seed!r}"[:160])

    def training(self) -> dict[str, Any]:
        """The :attr:`TRAINING` fields as a plain dict (stored in the checkpoint)."""
        return {name: getattr(self, name) for name in self.TRAINING}


SUPERNET_DEFAULTS: dict[str, SupernetSettings] = {
    # digits: the 8x8 scans upscaled to 16 px, 1,294 training images; 1@96 is C = 4
    # channels per op (8/16 in the later stages), 0.8 M supernet parameters; 30 epochs of
    # batch 32 (1,230 steps).
    "digits": SupernetSettings(scale="1@96", image_size=16, epochs=30, batch_size=32),
    # CIFAR: a 16 px proxy resolution (a quarter of the pixels of 32 px), 1@96, six epochs
    # over the 45,000 training images (8,442 steps, about 15 CPU minutes); each candidate is
    # scored on all 5,000 validation images: on the fidelity panel, Kendall tau against the
    # trained ground truth rises with them (one supernet: 0.17 on 500, 0.21 on 1,000, 0.30
    # on 2,000, 0.36 on 5,000), at about a second of one core per candidate.
    "cifar10": SupernetSettings(scale="1@96", image_size=16, epochs=6, batch_size=32, val_size=None),
    "cifar100": SupernetSettings(scale="1@96", image_size=16, epochs=6, batch_size=32, val_size=None),
    "imagefolder": SupernetSettings(scale="1@96", image_size=32, epochs=10, batch_size=32),
}
"""Per-dataset supernet settings (see :func:`supernet_settings`)."""


def supernet_settings(dataset: str, **overrides: Any) -> SupernetSettings:
    """The defaults of ``dataset`` (:data:`SUPERNET_DEFAULTS`) with ``overrides`` (``None`` skipped).

    Example: ``supernet_settings("digits", epochs=config.supernet_epochs, seed=config.seed)``.
    """
    base = SUPERNET_DEFAULTS.get(dataset.strip().lower(), SupernetSettings())
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SupernetSettings)}
    if unknown:
        raise TypeError(f"unknown supernet setting(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


class _NonFinite(Exception):
    """A candidate's output held NaN or infinity."""


class _Progress:
    """A tqdm bar over the training steps on a terminal; otherwise one line per epoch."""

    def __init__(self, total: int, done: int, *, enabled: bool, stream: TextIO):
        self.stream = stream
        is_tty = getattr(stream, "isatty", lambda: False)()
        self.bar = None
        if enabled and is_tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="supernet", unit="step", file=stream,
                            dynamic_ncols=True)

    def step(self, loss: float, accuracy: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")

    def epoch(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class OneShotEvaluator:
    """Accuracy of candidates from one weight-sharing supernet, trained (or resumed) once.

    Args:
        data: the dataset; the supernet trains on ``data.train`` and scores on ``data.val``.
        settings: training and scoring settings (:func:`supernet_settings`).
        checkpoint: ``supernet.pt`` (usually in the run directory); resumed when present.
        blocks: blocks per cell of the search space.

    Call :meth:`prepare` once (training happens there), then call the evaluator on genotypes.
    """

    def __init__(self, data: DataBundle, settings: SupernetSettings, checkpoint: str | Path,
                 blocks: int = 5):
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise NasdeployError(f"blocks per cell must be at least 1, got {blocks!r}"[:120])
        if len(data.val) == 0:
            raise NasdeployError("one-shot evaluation needs a validation split (val_fraction > 0)")
        self.data = data
        self.settings = settings
        self.checkpoint = Path(checkpoint)
        self.blocks = blocks
        self.image_size = settings.image_size or data.image_size
        self.scale: Scale = parse_scale(settings.scale, self.image_size)
        self.device = resolve_device(settings.device)
        self.supernet: Supernet | None = None
        self.finished = False
        self._seconds = 0.0
        self._train_images: ImageTensorDataset | None = None
        self._bn_batches: list[torch.Tensor] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # --- identity -------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be this run's supernet."""
        return {"blocks": self.blocks, "dataset": self.data.name, "num_classes": self.data.num_classes,
                "image_size": self.image_size, "scale": self.scale.notation, "layout": self.scale.layout}

    @property
    def seconds_trained(self) -> float:
        """Supernet training wall time in seconds, summed over every session that trained it."""
        return round(self._seconds, 3)

    # --- training -------------------------------------------------------------------

    def prepare(self, progress: bool = True, stream: TextIO | None = None) -> None:
        """Train the supernet, resume a partial ``supernet.pt`` or load a finished one.

        Idempotent: once the supernet is trained (or loaded) this returns at once.

        Args:
            progress: a tqdm bar when ``stream`` is a terminal; ``False`` (or a stream that
                is not a terminal) prints one line per epoch instead.
            stream: where progress goes (default ``sys.stderr``).

        Raises:
            NasdeployError: an unreadable or mismatched checkpoint, training that diverged.
        """
        if self.finished and self.supernet is not None:
            return
        stream = stream if stream is not None else sys.stderr
        state = read_supernet(self.checkpoint) if self.checkpoint.exists() else None
        if state is not None:
            self._check(state)
        with self._context():
            torch.manual_seed(self.settings.seed)
            supernet = Supernet(self.blocks, self.scale, self.data.num_classes).to(self.device)
            if state is not None and state["finished"]:
                _load_weights(supernet, state["model"], self.checkpoint)
                self._seconds = float(state["seconds"])
                print(f"supernet: loaded {self.checkpoint} (trained {self._seconds:.0f} s, "
                      f"{state['step']} steps)", file=stream, flush=True)
            else:
                self._train(supernet, state, progress, stream)
            self.supernet = supernet
            self._prepare_scoring()
        self.finished = True

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        """Fork torch's RNG (callers' random state is untouched) and pin the CPU threads."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        threads = self.settings.cpu_threads if self.device.type == "cpu" else None
        with torch.random.fork_rng(devices=devices), _torch_threads(threads):
            yield

    def _train_set(self) -> ImageTensorDataset:
        """The training images at the supernet's size (seeded ``train_size`` subset), made once."""
        if self._train_images is not None:
            return self._train_images
        train = self.data.train
        size = self.settings.train_size
        if size is not None and size < len(train):
            generator = torch.Generator().manual_seed(self.settings.seed)
            keep = torch.randperm(len(train), generator=generator)[:size]
            train = train.subset(torch.sort(keep).values, train.augment)
        if self.image_size != self.data.image_size:
            train = train.resized(self.image_size)
        self._train_images = train
        return train

    def _check(self, state: dict[str, Any]) -> None:
        path = self.checkpoint
        saved = state["identity"]
        names = {"blocks": "blocks per cell", "dataset": "dataset", "num_classes": "classes",
                 "image_size": "image size", "scale": "scale", "layout": "layout"}
        for key, current in self.identity().items():
            if saved.get(key) != current:
                raise NasdeployError(f"{path} holds the supernet of another run: {names[key]} "
                                     f"{saved.get(key)!r:.40} there, {current!r:.40} here; move it away "
                                     "to train a new supernet")
        trained = state["settings"]
        for key, current in self.settings.training().items():
            if key in ("scale", "image_size"):
                continue  # compared as the resolved scale and size above
            if trained.get(key) != current:
                raise NasdeployError(f"{path} was trained with supernet {key.replace('_', ' ')} "
                                     f"{trained.get(key)!r:.40}, this run asks for {current!r:.40}; "
                                     "keep the setting or move the file away")

    def _train(self, supernet: Supernet, state: dict[str, Any] | None, progress: bool,
               stream: TextIO) -> None:
        s = self.settings
        for stale in self.checkpoint.parent.glob(f".{self.checkpoint.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # a save cut short by a kill (the run is locked)
        train = self._train_set()
        per_epoch, total = num_steps(len(train), s.batch_size, s.epochs)
        optimizer = torch.optim.SGD(supernet.parameters(), lr=s.lr, momentum=s.momentum,
                                    weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        sampler = torch.Generator().manual_seed(s.seed)
        step, seconds = 0, 0.0
        if state is not None:
            try:
                supernet.load_state_dict(unpack_tensors(state["model"]))
                optimizer.load_state_dict(_unpack_optimizer(state["optimizer"]))
                scheduler.load_state_dict(state["scheduler"])
                sampler.set_state(state["sampler"])
                torch.set_rng_state(state["torch_rng"])
            except Exception as exc:  # a dict of the wrong shape
                raise NasdeployError(f"{self.checkpoint} does not fit this supernet "
                                     f"({one_line(exc, 120)}); move it away to train afresh") from None
            step, seconds = int(state["step"]), float(state["seconds"])
        resumed = f", resuming at step {step}" if step else ""
        print(f"supernet: training {self.scale.notation} at {self.image_size} px, {self.blocks} blocks, "
              f"{s.epochs} epochs x {per_epoch} steps on {len(train):,} images{resumed} -> {self.checkpoint}",
              file=stream, flush=True)
        bar = _Progress(total, step, enabled=progress, stream=stream)
        session_start = time.perf_counter()
        last_save = session_start
        sums = [0.0, 0, 0]  # loss x n, correct, seen in this epoch (this session)
        epoch_start = session_start
        order: torch.Tensor | None = None
        supernet.train()

        def elapsed() -> float:
            return seconds + time.perf_counter() - session_start

        def save(finished: bool) -> None:
            self._seconds = round(elapsed(), 3)
            payload = self._payload(supernet, optimizer, scheduler, sampler, step, total, self._seconds,
                                    finished)
            with atomic_path(self.checkpoint) as tmp:
                torch.save(payload, tmp)

        try:
            while step < total:
                epoch, k = divmod(step, per_epoch)
                if order is None or k == 0:
                    order = torch.randperm(len(train), generator=epoch_generator(s.seed, epoch))
                indices = order[k * s.batch_size:(k + 1) * s.batch_size]
                images, labels = train.batch(indices, _step_generator(s.seed, step))
                images, labels = images.to(self.device), labels.to(self.device)
                genotype = sample_genotype(supernet.space, sampler)
                logits = supernet(images, genotype)
                loss = F.cross_entropy(logits, labels)
                if not torch.isfinite(loss):
                    raise NasdeployError(f"supernet training diverged at step {step + 1} (loss "
                                         f"{loss.item()}); lower the supernet learning rate")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip > 0:
                    nn.utils.clip_grad_norm_(supernet.parameters(), s.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                n = int(labels.shape[0])
                sums[0] += loss.item() * n
                sums[1] += int((logits.argmax(1) == labels).sum())
                sums[2] += n
                bar.step(sums[0] / sums[2], sums[1] / sums[2])
                if step % per_epoch == 0 or step == total:
                    took = time.perf_counter() - epoch_start
                    bar.epoch(f"supernet epoch {epoch + 1}/{s.epochs}: loss {sums[0] / sums[2]:.4f} "
                              f"train_acc {sums[1] / sums[2]:.4f} ({took:.1f} s, {elapsed():.0f} s in all)")
                    sums, epoch_start = [0.0, 0, 0], time.perf_counter()
                if step < total and time.perf_counter() - last_save >= s.checkpoint_every_s:
                    save(False)
                    last_save = time.perf_counter()
        finally:
            bar.close()
            self._seconds = elapsed()
        save(True)  # the seconds trained stop here, as recorded in the checkpoint
        supernet.eval()

    def _payload(self, supernet: Supernet, optimizer: torch.optim.Optimizer, scheduler: Any,
                 sampler: torch.Generator, step: int, total: int, seconds: float,
                 finished: bool) -> dict[str, Any]:
        return {
            "format": SUPERNET_FORMAT, "version": SUPERNET_VERSION,
            "identity": self.identity(), "settings": self.settings.training(),
            "model": pack_tensors(supernet.state_dict()),
            "optimizer": _pack_optimizer(optimizer), "scheduler": scheduler.state_dict(),
            "sampler": sampler.get_state(), "torch_rng": torch.get_rng_state(),
            "step": step, "total_steps": total, "seconds": round(seconds, 3), "finished": finished,
        }

    # --- scoring --------------------------------------------------------------------

    def _prepare_scoring(self) -> None:
        """Fixed recalibration batches and validation subset, normalised, on the device."""
        s = self.settings
        train = self._train_set().plain()
        generator = torch.Generator().manual_seed(s.seed + 1)
        count = min(len(train), s.bn_batches * s.bn_batch_size)
        picked = torch.randperm(len(train), generator=generator)[:count]
        images, _ = train.batch(picked)
        self._bn_batches = [chunk.to(self.device) for chunk in images.split(s.bn_batch_size)]
        val = self.data.val.plain()
        if self.image_size != self.data.image_size:
            val = val.resized(self.image_size)
        keep = torch.arange(len(val))
        if s.val_size is not None and s.val_size < len(val):
            keep = torch.sort(torch.randperm(len(val), generator=generator)[:s.val_size]).values
        images, labels = val.batch(keep)
        self._val = [(x.to(self.device), y.to(self.device))
                     for x, y in zip(images.split(512), labels.split(512), strict=True)]

    def check(self, genotype: Genotype) -> None:
        """Refuse a genotype outside the supernet's space (one-line :class:`NasdeployError`)."""
        from search.nn.supernet import check_in_space

        check_in_space(genotype, self.blocks)

    def __call__(self, genotype: Genotype) -> AccuracyResult:
        """Validation accuracy of ``genotype`` with inherited weights (deterministic).

        ``train_time_s`` is the seconds this scoring took, ``params`` the parameters of the
        candidate as a standalone network at the supernet's scale (0 if it failed early).
        Trains or loads the supernet first if :meth:`prepare` was not called.

        Raises:
            NasdeployError: ``genotype`` is outside the search space of the supernet.
        """
        self.check(genotype)
        if not self.finished:
            self.prepare(progress=False)
        start = time.perf_counter()
        params = 0
        with self._context():
            try:
                params = estimate_size(genotype, self.scale, self.data.num_classes).params
                accuracy = self._score(genotype)
            except _NonFinite as exc:
                return AccuracyResult(0.0, "diverged", str(exc), _since(start), params)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                return AccuracyResult(0.0, "failed", "CUDA out of memory", _since(start), params)
            except Exception as exc:  # any failure of this candidate is recorded, not raised
                return AccuracyResult(0.0, "failed", one_line(exc), _since(start), params)
        return AccuracyResult(accuracy, "ok", None, _since(start), params)

    @torch.no_grad()
    def _score(self, genotype: Genotype) -> float:
        supernet = self.supernet
        if supernet is None:
            raise RuntimeError("the supernet is not prepared")
        norms = batchnorms(supernet.path_modules(genotype))
        saved = [m.momentum for m in norms]
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the recalibration batches
            supernet.train()
            for images in self._bn_batches:
                supernet(images, genotype)
            supernet.eval()
            correct, seen = 0, 0
            for images, labels in self._val:
                logits = supernet(images, genotype)
                if not finite(logits):
                    bad = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
                    raise _NonFinite(f"the candidate's output is {bad} with inherited weights")
                correct += int((logits.argmax(1) == labels).sum())
                seen += int(labels.shape[0])
        finally:
            for m, momentum in zip(norms, saved, strict=True):
                m.momentum = momentum
            supernet.eval()
        return correct / seen


def read_supernet(path: str | Path) -> dict[str, Any]:
    """Load and check a supernet checkpoint's dict; one-line :class:`NasdeployError` otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NasdeployError(f"supernet checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise NasdeployError(f"{path} is a directory, not a supernet checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on corrupt or foreign files
        raise NasdeployError(f"cannot read {path}: not a supernet checkpoint ({type(exc).__name__}); "
                             "move it away to train the supernet afresh") from None
    if not isinstance(state, dict) or state.get("format") != SUPERNET_FORMAT:
        raise NasdeployError(f"{path} is not a supernet checkpoint; move it away to train the supernet "
                             "afresh")
    if state.get("version") != SUPERNET_VERSION:
        raise NasdeployError(f"{path}: unsupported supernet checkpoint version {state.get('version')!r:.20}; "
                             f"this nasdeploy reads {SUPERNET_VERSION}")
    required = {"identity": dict, "settings": dict, "model": dict, "step": int, "total_steps": int,
                "seconds": float, "finished": bool}
    for key, kind in required.items():
        if not isinstance(state.get(key), kind):
            raise NasdeployError(f"{path} is a damaged supernet checkpoint (no valid {key!r}); move it "
                                 "away to train the supernet afresh")
    return state


def load_supernet(checkpoint: str | Path, data: DataBundle, *, progress: bool = False,
                  stream: TextIO | None = None, **scoring: Any) -> OneShotEvaluator:
    """A prepared evaluator for the finished supernet in ``checkpoint`` (no training).

    The training settings and block count come from the checkpoint; ``scoring`` may set
    the scoring fields (``bn_batches``, ``bn_batch_size``, ``val_size``, ``cpu_threads``,
    ``device``). ``data`` must be the dataset it was trained on.

    Raises:
        NasdeployError: unreadable, foreign, mismatched or unfinished checkpoint.
    """
    allowed = {"bn_batches", "bn_batch_size", "val_size", "cpu_threads", "device"}
    if set(scoring) - allowed:
        raise TypeError(f"load_supernet sets only {', '.join(sorted(allowed))}")
    state = read_supernet(checkpoint)
    if not state["finished"]:
        raise NasdeployError(f"{checkpoint} holds a partly trained supernet (step {state['step']} of "
                             f"{state['total_steps']}); resume the search to finish training it")
    try:
        settings = SupernetSettings(**{**state["settings"], **scoring})
        blocks = int(state["identity"]["blocks"])
    except (TypeError, KeyError, ValueError) as exc:
        raise NasdeployError(f"{checkpoint} is a damaged supernet checkpoint ({one_line(exc, 80)})") from None
    evaluator = OneShotEvaluator(data, settings, checkpoint, blocks)
    evaluator.prepare(progress=progress, stream=stream)
    return evaluator


def pack_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``tensors`` as one flat CPU tensor per dtype plus names and shapes.

    A supernet has thousands of small tensors; saved one by one, a checkpoint takes about
    0.15 s to write and 0.6 s to read with ``weights_only=True``, packed a few hundredths.
    """
    names, shapes, dtypes = [], [], []
    flats: dict[str, list[torch.Tensor]] = {}
    for name, tensor in tensors.items():
        kind = str(tensor.dtype).removeprefix("torch.")
        names.append(name)
        shapes.append(list(tensor.shape))
        dtypes.append(kind)
        flats.setdefault(kind, []).append(tensor.detach().reshape(-1).cpu())
    return {"names": names, "shapes": shapes, "dtypes": dtypes,
            "data": {kind: torch.cat(parts) for kind, parts in flats.items()}}


def unpack_tensors(packed: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of :func:`pack_tensors` (views into its flat tensors)."""
    offsets = dict.fromkeys(packed["data"], 0)
    out: dict[str, torch.Tensor] = {}
    for name, shape, kind in zip(packed["names"], packed["shapes"], packed["dtypes"], strict=True):
        count = math.prod(shape)
        start = offsets[kind]
        out[name] = packed["data"][kind][start:start + count].view(shape)
        offsets[kind] = start + count
    return out


def _pack_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with its per-parameter tensors packed."""
    state = optimizer.state_dict()
    tensors, other = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            target = tensors if isinstance(value, torch.Tensor) else other
            target[f"{index}/{key}"] = value
    return {"tensors": pack_tensors(tensors), "other": other, "param_groups": state["param_groups"]}


def _unpack_optimizer(packed: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for source in (unpack_tensors(packed["tensors"]), packed["other"]):
        for name, value in source.items():
            index, key = name.split("/", 1)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": packed["param_groups"]}


def _load_weights(supernet: Supernet, packed: dict[str, Any], path: Path) -> None:
    try:
        supernet.load_state_dict(unpack_tensors(packed))
    except Exception as exc:  # noqa: BLE001 - missing or misshapen tensors
        raise NasdeployError(f"{path} does not fit this supernet ({one_line(exc, 120)}); move it away "
                             "to train afresh") from None


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The augmentation RNG of training step ``step`` (a function of the seed and step only)."""
    return torch.Generator().manual_seed((seed << 32) ^ ((step * 2_654_435_761 + 1) & 0xFFFFFFFF))


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)
