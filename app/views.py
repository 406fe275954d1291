"""Page sections of the demo: sidebar model picker, Classify and Model card tabs.

Each section turns known errors (:class:`~search.core.errors.NasdeployError`, which covers
``ServeError`` and ``ImageError``) into a one-line ``st.error`` / ``st.warning``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from app import models
from app.charts import genotype_key, genotype_png, topk_chart
from search.core.errors import NasdeployError
from search.space.baselines import describe, model_title
from search.space.card import ModelCard
from serve.bundled import is_bundled
from serve.errors import ImageError
from serve.preprocess import load_image
from serve.runtime import Prediction, Runtime, available_backends, classify

TOP_K = 5
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp"]
BUNDLED_LABEL = "bundled CIFAR-10 model"
YOUR_RUNS = (
    "To see your own models: search, train and export one (README, *From search to demo*), then "
    "point **Runs folder** in the sidebar at the folder holding it (default `runs/`, or `$NASDEPLOY_RUNS`); "
    "its models are listed above this one."
)
NO_MODEL = (
    "No model selected. Export one with `python -m export.onnx RUN_DIR` (it writes "
    "`RUN_DIR/model.onnx`), point **Runs folder** at its parent, or type a model path in the sidebar."
)


@dataclass(frozen=True)
class ModelChoice:
    """What the sidebar selected: the runs folder, a model file (or none) and a backend."""

    root: str
    path: Path | None
    backend: str | None
    bundled: bool = False


@contextmanager
def friendly_errors(where: str) -> Iterator[None]:
    """Show known errors as one line in the page instead of a traceback."""
    try:
        yield
    except NasdeployError as exc:
        st.error(md(str(exc)), icon=":material/warning:")
    except Exception as exc:  # last resort: the page must keep working
        st.error(md(f"{where} failed: {type(exc).__name__}: {exc}"), icon=":material/warning:")


def md(text: str) -> str:
    """``text`` with Markdown/LaTeX characters escaped (class and file names are data)."""
    return re.sub(r"([\\`*_{}\[\]()#+!|$<>~-])", r"\\\1", str(text))


def relative_label(path: Path, root: str) -> str:
    try:
        return str(path.relative_to(Path(root)))
    except ValueError:
        return str(path)


def sidebar() -> ModelChoice:
    """Runs folder, model file, optional path override and backend."""
    bar = st.sidebar
    bar.header("Model")
    root = bar.text_input(
        "Runs folder",
        value=models.runs_root(),
        help=f"Searched for *.onnx / *.engine; default ${models.RUNS_ENV} or runs/",
    )
    found = models.discover_models(root)
    bundled = models.bundled_model()
    options = found + ([bundled] if bundled is not None else [])
    picked = None
    if options:
        runnable = [i for i, p in enumerate(options) if models.backends_for(p)]
        picked = bar.selectbox(
            "Model file", options, index=runnable[0] if runnable else 0,
            format_func=lambda p: BUNDLED_LABEL if p == bundled else relative_label(p, root),
        )
    if not found:
        showing = "; showing the bundled CIFAR-10 model" if bundled is not None else ""
        bar.caption(f"No `.onnx` / `.engine` files under `{root}`{showing}.")
    typed = bar.text_input("…or a model path", placeholder="runs/exp1/model.onnx, or bundled").strip()
    if is_bundled(typed) and bundled is not None:  # the name the serving CLIs take, same rule
        picked, typed = bundled, ""
    path = Path(typed).expanduser() if typed else picked
    backends = models.backends_for(path) if path else available_backends()
    backend = bar.selectbox("Backend", backends) if backends else None
    bar.caption("Available here: " + (", ".join(available_backends()) or "none"))
    if path and not backends:
        engine = path.suffix == ".engine"
        hint = " (TensorRT engines need an NVIDIA GPU; pick the `.onnx` file)" if engine else ""
        bar.warning(f"No backend on this machine runs `{path.suffix}` files{hint}.")
    return ModelChoice(root, path, backend, bundled=path is not None and path == bundled)


def load_choice(choice: ModelChoice) -> Runtime | None:
    """The cached runtime for the sidebar's choice, or ``None`` with a message shown."""
    if choice.path is None or choice.backend is None:
        return None
    with friendly_errors("loading the model"):
        return models.get_runtime(choice.path, choice.backend)
    return None


def model_line(runtime: Runtime | None, bundled: bool = False) -> str:
    """One line under the title: what runs, where."""
    if runtime is None:
        return "A NASNet-style cell searched under a latency budget. Pick a model in the sidebar."
    info = runtime.info
    provider = runtime.describe().get("provider", runtime.backend)
    where = f"the {BUNDLED_LABEL} `{runtime.path.name}`" if bundled else \
        f"`{runtime.path.parent.name}/{runtime.path.name}`"
    return f"{network_text(info)} at {info.image_size} px · {where} on **{runtime.backend}** ({provider})"


def network_text(info: ModelCard) -> str:
    """What the network is: ``Baseline **MobileNetV2 ×0.5**`` or ``Searched NASNet-style cell **1@48**``."""
    if info.architecture is not None:
        # catalogue titles, or a name the card holds to [a-z0-9_]: nothing to escape
        return f"Baseline **{model_title(info.architecture, info.width_mult)}**"
    return f"Searched NASNet-style cell **{info.scale or '?'}**"


def bundled_note(runtime: Runtime | None, choice: ModelChoice) -> None:
    """On the bundled model: say what it is and how to switch to one's own runs."""
    if runtime is None or not choice.bundled:
        return
    info = runtime.info
    accuracy = "" if info.accuracy is None else f", {info.accuracy:.1%} accurate on the CIFAR-10 test set"
    st.info(
        f"You are looking at the **{BUNDLED_LABEL}** that ships with nasdeploy. {network_text(info)} for "
        f"{info.image_size} px images{accuracy}. Its ten sample photos (CIFAR-10 test images it never "
        f"trained on) are classified below, on this machine. {YOUR_RUNS}",
        icon=":material/inventory_2:",
    )


def _inputs(preselect: list[str] | None = None) -> list[tuple[str, bytes]]:
    """Uploaded files and picked samples (``preselect`` picked at first) as ``(name, bytes)``."""
    uploads = st.file_uploader(
        "Upload images (JPEG, PNG or WebP; any size, colour or grayscale)",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
    )
    samples = models.sample_images()
    picked = st.pills("…or try bundled samples", list(samples), selection_mode="multi",
                      default=[name for name in preselect or [] if name in samples]) or []
    items = [(f.name, f.getvalue()) for f in uploads or []]
    return items + [(name, path.read_bytes()) for name, path in samples.items() if name in picked]


def classify_tab(runtime: Runtime | None, choice: ModelChoice | None = None) -> None:
    """Upload or pick images and show the top-5 classes and latency of each (on the bundled
    model, its ten CIFAR-10 photos are picked at first)."""
    items = _inputs(models.cifar_samples() if runtime is not None and choice is not None and choice.bundled
                    else None)
    if runtime is None:
        st.info(NO_MODEL, icon=":material/info:")
        return
    if not items:
        st.caption("Predictions appear here, one card per image.")
        return
    provider = runtime.describe().get("provider", runtime.backend)
    for name, data in items:
        with st.container(border=True), friendly_errors(f"classifying {name}"):
            try:
                image = load_image(data)
            except ImageError as exc:
                st.error(f"**{md(name)}**: {md(str(exc))}", icon=":material/broken_image:")
                continue
            _prediction_card(name, image, classify(runtime, [image], k=TOP_K)[0], provider)


def _prediction_card(name: str, image: Image.Image, pred: Prediction, provider: str) -> None:
    left, right = st.columns([1, 2], vertical_alignment="center")
    left.image(image, caption=f"{name} · {image.width}×{image.height}", width=220)
    best, prob = pred.top[0]
    right.markdown(f"#### {md(best)} — {prob:.1%}")
    right.altair_chart(topk_chart(pred.top), width="stretch")
    right.caption(f":material/timer: inference {pred.latency_ms:.2f} ms (batch 1) on {provider}")


def _human(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g} {suffix}{unit}"
    return f"{value:g} {unit}".strip()


def model_card_tab(runtime: Runtime | None, choice: ModelChoice) -> None:
    """Scale (or a baseline's architecture), size, cost, measured latency, accuracy and the drawn
    cells of the model (or what the baseline is)."""
    if runtime is None:
        st.info(NO_MODEL, icon=":material/info:")
        return
    with friendly_errors("the model card"):
        _model_card(runtime, choice)


def _model_card(runtime: Runtime, choice: ModelChoice) -> None:
    info = runtime.info
    latency = models.model_latency(runtime, choice.backend or "auto")
    cols = st.columns(6)
    if info.architecture is not None:
        cols[0].metric("Architecture", model_title(info.architecture, info.width_mult),
                       help=describe(info.architecture, info.width_mult))
    else:
        cols[0].metric("Scale (N@F)", info.scale or "—")
    cols[1].metric("Input", f"{info.image_size}×{info.image_size} px")
    cols[2].metric("Parameters", _human(info.params))
    cols[3].metric("MACs", _human(info.macs))
    cols[4].metric(
        "Latency here", f"{latency.stats.median_ms:.2f} ms",
        help=f"median of {latency.stats.count} batch-1 runs on this machine "
             f"(p90 {latency.stats.p90_ms:.2f} ms)",
    )
    cols[5].metric("Accuracy", "—" if info.accuracy is None else f"{info.accuracy:.1%}",
                   help="from the model's training/export metadata")
    st.caption(_facts(info, runtime))
    if info.architecture is not None:
        show_architecture(info)
    else:
        show_cells(info.genotype.to_dict() if info.genotype else None)
    card = models.bundled_card() if choice.bundled else None
    if card:
        with st.expander("About the bundled model"):
            st.markdown(card)
    with st.expander("Runtime details"):
        st.json(runtime.describe())


def _facts(info: ModelCard, runtime: Runtime) -> str:
    parts = [
        f"dataset **{info.dataset or 'unknown'}**",
        f"{len(info.class_names)} classes",
        f"precision **{info.precision}**",
        f"backend **{runtime.backend}** ({runtime.describe().get('provider', '')})",
        f"file `{runtime.path}`",
    ]
    return " · ".join(parts)


def show_architecture(info: ModelCard) -> None:
    """What a baseline is, in place of the cells a searched model draws."""
    st.subheader("Architecture")
    st.markdown(f"Hand-designed baseline: **{describe(info.architecture or '', info.width_mult)}**, "
                f"built for {info.image_size} px inputs (`python -m search.train --model "
                f"{info.architecture}`). It has no searched cells to draw.")


def show_cells(genotype: dict | None, title: str | None = "Cells") -> None:
    """Draw a genotype's cells (and show its JSON), or say why not."""
    if title:
        st.subheader(title)
    if not genotype:
        st.info("This model carries no genotype in its metadata.", icon=":material/info:")
        return
    with friendly_errors("drawing the cells"):
        try:
            st.image(genotype_png(genotype_key(genotype)), width="stretch")
        except ImportError:
            st.warning("Drawing cells needs matplotlib, which is missing.", icon=":material/warning:")
    with st.expander("Genotype JSON"):
        st.json(genotype)
