"""The report's figures: plain values in, PNG bytes out (matplotlib, Agg backend, no display needed)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")   # before pyplot: a headless node or Ray worker has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

WIDTH, HEIGHT, DPI = 6.0, 2.6, 90   # small figures: the page stays light and each chart fits a column
COLOR = "#3465a4"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _empty(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def histogram(values: np.ndarray, xlabel: str, *, bins: int = 30, lines: dict[str, float] | None = None) -> bytes:
    """A histogram of values, with optional labelled vertical lines (e.g. mean +- std)."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values):
        ax.hist(values, bins=bins, color=COLOR)
        for (label, x), style in zip((lines or {}).items(), ("--", ":", "-.", "-")):
            ax.axvline(x, color="#cc0000", linestyle=style, label=label)
        if lines:
            ax.legend(fontsize=8)
        ax.set_ylabel("count")
    else:
        _empty(ax)
    ax.set_xlabel(xlabel)
    return _png(fig)


def bars(labels: list[str], counts: list[float], xlabel: str, *, colors: list[str] | None = None) -> bytes:
    """Horizontal bars, the first label on top (long labels such as "stage / reason" stay readable)."""
    fig, ax = plt.subplots(figsize=(WIDTH, max(1.4, 0.28 * len(labels) + 0.8)))
    if labels:
        y = np.arange(len(labels))[::-1]
        ax.barh(y, counts, color=colors or COLOR)
        ax.set_yticks(y, labels, fontsize=8)
        for yi, c in zip(y, counts):
            ax.text(c, yi, f" {c:g}", va="center", fontsize=8)
        ax.set_xlim(0, max(counts) * 1.15 or 1)
    else:
        _empty(ax, "none")
    ax.set_xlabel(xlabel)
    return _png(fig)


def mix_chart(achieved: float, target: float | None) -> bytes:
    """The original-caption fraction achieved, against the target probability (a ceiling, not an equality:
    tracks without an original caption always train on the synthetic one)."""
    fig, ax = plt.subplots(figsize=(WIDTH, 1.5))
    ax.barh([0], [achieved], color=COLOR, label=f"achieved {achieved:.1%}")
    ax.barh([0], [1 - achieved], left=[achieved], color="#d3d7cf")
    if target is not None:
        ax.axvline(target, color="#cc0000", linestyle="--", label=f"target {target:.0%}")
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("fraction of clips training on their original caption")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def mel_image(log_mel: np.ndarray) -> bytes:
    """A [frames, mels] log-mel as a small image: time left to right, low frequencies at the bottom."""
    fig, ax = plt.subplots(figsize=(3.2, 1.1))
    ax.imshow(np.asarray(log_mel).T, origin="lower", aspect="auto", cmap="magma")
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()
