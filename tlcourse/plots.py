"""Figures of the course: labelled (title, axes with units, legend), readable in a notebook and
in print, returned as matplotlib Figures to inspect or save.  Importing it changes no global state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from importlib import resources
from itertools import zip_longest

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tlcourse.models.records import History


# --- activations / lesson 01 -------------------------------------------------------

#: Colour of each era in the ILSVRC chart.
ERA_COLOURS = {"SVM": "tab:blue", "CNN": "tab:orange"}
ILSVRC_COLUMNS = ("kind", "year", "team", "model", "label", "top5_error_pct", "era", "source", "note")


def ilsvrc_table() -> pd.DataFrame:
    """The ILSVRC classification winners 2010-2017 (``kind`` ``winner``) and the human-level estimate
    (``human``), from the package's ``ilsvrc.csv``, whose ``source`` column cites each figure."""
    with resources.files("tlcourse").joinpath("ilsvrc.csv").open(encoding="utf-8") as f:
        table = pd.read_csv(f, keep_default_na=False)
    if missing := set(ILSVRC_COLUMNS) - set(table.columns):
        raise ValueError(f"tlcourse/ilsvrc.csv lacks the columns {sorted(missing)}; reinstall tlcourse.")
    return table


def plot_ilsvrc(table: pd.DataFrame | None = None) -> Figure:
    """Bar chart of the winning top-5 error by year, coloured by era, human estimate dashed."""
    table = ilsvrc_table() if table is None else table
    winners = table[table["kind"] == "winner"].sort_values("year")
    fig, ax = plt.subplots(figsize=(10, 5.2))
    bars = ax.bar(winners["year"], winners["top5_error_pct"], width=0.7,
                  color=[ERA_COLOURS.get(era, "tab:grey") for era in winners["era"]])
    ax.bar_label(bars, [f"{e:g}%\n{label}" for e, label in zip(winners["top5_error_pct"], winners["label"])],
                 padding=3, fontsize=8)
    for _, row in table[table["kind"] == "human"].iterrows():
        ax.axhline(row["top5_error_pct"], color="black", linestyle="--", linewidth=1.2,
                   label=f"human-level estimate: {row['top5_error_pct']:g}% ({row['label']})")
    ax.set(xticks=winners["year"], xlabel="ILSVRC year", ylabel="winning top-5 error (%)",
           ylim=(0, winners["top5_error_pct"].max() * 1.2),
           title="ImageNet challenge (ILSVRC): top-5 classification error of the winner, by year")
    ax.legend(handles=[Patch(color=c, label=f"{era} era winner") for era, c in ERA_COLOURS.items()
                       if era in set(winners["era"])] + ax.get_lines(), loc="upper right")
    fig.text(0.01, 0.005, "Data: tlcourse/ilsvrc.csv, from Russakovsky et al. (IJCV 2015) and the "
             "winners' papers; its 'source' column cites each row.", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _grid(n: int, ncols: int, width: float, height: float):
    """A figure with a grid of ``n`` axes, at most ``ncols`` wide; the axes as a flat list."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.9), squeeze=False)
    return fig, list(axes.flat)


def _show(axes, images: Sequence, titles: Sequence[str] = (), **imshow) -> None:
    """``images`` on ``axes`` without ticks (ylabels stay visible), titled; spare axes hidden."""
    for ax, image, title in zip_longest(axes, images, titles):
        if image is None:
            ax.axis("off")
        else:
            ax.imshow(image, **imshow)
            ax.set_title(title or "", fontsize=8)
            ax.set(xticks=[], yticks=[])


def plot_filters(weight: torch.Tensor, max_filters: int = 32, ncols: int = 8,
                 title: str | None = None) -> Figure:
    """Convolution filters ``(out, in, kh, kw)`` as small images, each scaled to [0, 1] on its own
    so its pattern shows whatever its magnitude; in colour on 3 input channels, else the mean."""
    w = weight.detach().float().cpu()
    if w.dim() != 4:
        raise ValueError(f"expected convolution weights (out, in, kh, kw), got shape {tuple(w.shape)}.")
    total, channels, kh, kw = w.shape
    rgb = channels == 3
    w = w[:max_filters] if rgb else w[:max_filters].mean(dim=1, keepdim=True)
    low, high = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
    images = ((w - low) / (high - low).clamp_min(1e-8)).permute(0, 2, 3, 1).squeeze(-1).numpy()
    fig, axes = _grid(len(images), ncols, 1.2, 1.3)
    _show(axes, images, [f"filter {i}" for i in range(len(images))], cmap=None if rgb else "gray",
          interpolation="nearest", vmin=0, vmax=1)
    fig.suptitle(title or f"Convolution filters: {len(images)} of {total}, each {kh}×{kw} pixels "
                 f"({'RGB' if rgb else 'mean over inputs'}), each scaled to [0, 1] on its own", fontsize=11)
    fig.tight_layout()
    return fig


def _maps(maps: torch.Tensor) -> torch.Tensor:
    maps = maps.detach().float().cpu()
    if maps.dim() == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.dim() != 3:
        raise ValueError(f"expected feature maps (C, H, W) or (1, C, H, W), got {tuple(maps.shape)}.")
    return maps


def top_channels(maps: torch.Tensor, n: int) -> list[int]:
    """The ``n`` channels of ``maps`` (C, H, W) varying most across positions (largest std): not flat ones."""
    maps = _maps(maps)
    return maps.flatten(1).std(dim=1).topk(min(n, maps.shape[0])).indices.tolist()


def _show_channels(axes, maps: torch.Tensor, chosen: Sequence[int], cmap: str) -> None:
    _show(axes, [maps[int(c)].numpy() for c in chosen], [f"channel {int(c)}" for c in chosen], cmap=cmap)


def plot_feature_maps(maps: torch.Tensor, channels: Sequence[int] | None = None, n: int = 8,
                      ncols: int = 8, title: str | None = None, cmap: str = "viridis") -> Figure:
    """A grid of feature maps ``(C, H, W)``, one per channel, each scaled to its own range (bright =
    strongest response); ``channels`` picks which, by default the ``n`` :func:`top_channels`."""
    maps = _maps(maps)
    c, h, w = maps.shape
    chosen = list(channels) if channels is not None else top_channels(maps, n)
    if not chosen:
        raise ValueError("no channels to show: pass at least one channel index.")
    if bad := [ch for ch in chosen if not 0 <= int(ch) < c]:
        raise ValueError(f"channels {bad} do not exist: this layer has {c} (0 to {c - 1}).")
    fig, axes = _grid(len(chosen), ncols, 1.6, 1.6)
    _show_channels(axes, maps, chosen, cmap)
    fig.suptitle(title or f"Feature maps: {len(chosen)} of {c} channels, {h}×{w} positions", fontsize=11)
    fig.text(0.5, 0.005, "each map scaled to its own range; bright = strong response",
             ha="center", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def plot_feature_comparison(columns: Mapping[str, Mapping[str, torch.Tensor]], n_channels: int = 4,
                            title: str | None = None, cmap: str = "viridis") -> Figure:
    """Feature maps of several models side by side: ``columns`` maps a panel title to ``{layer: maps}``
    (the same layers in each); a row per layer shows its ``n_channels`` :func:`top_channels`."""
    if not columns:
        raise ValueError("nothing to compare: pass {'panel title': {'layer': maps}, ...}.")
    layers = list(next(iter(columns.values())))
    for label, found in columns.items():
        if list(found) != layers:
            raise ValueError(f"panel {label!r} has layers {list(found)}, expected {layers} as in the first.")
    fig = plt.figure(figsize=(1.6 * n_channels * len(columns) + 1.2, 1.75 * len(layers) + 1.0),
                     layout="constrained")
    panels = fig.subfigures(1, len(columns), wspace=0.04, squeeze=False)[0]
    for panel, (label, found) in zip(panels, columns.items()):
        for row, layer in zip(panel.subplots(len(layers), n_channels, squeeze=False), layers):
            maps = _maps(found[layer])
            _show_channels(row, maps, top_channels(maps, n_channels), cmap)
            c, h, w = maps.shape
            row[0].set_ylabel(f"{layer}\n{c} ch, {h}×{w}", fontsize=9)
        panel.suptitle(label, fontsize=11)
    fig.suptitle(title or "Feature maps side by side (most varied channels, each map scaled to its own "
                 "range)", fontsize=12)
    return fig


def plot_predictions(images: Mapping[str, object], predictions: Mapping[str, Sequence[tuple[str, float]]],
                     title: str | None = None) -> Figure:
    """Photos in a row, each above a bar chart of its top-k classes (first synonym only): ``images``
    maps a name to a PIL image or array, ``predictions`` the same names to ``models.top_k``'s pairs."""
    fig, axes = plt.subplots(2, len(images), figsize=(3.3 * len(images), 6.2), squeeze=False,
                             gridspec_kw={"height_ratios": (1.2, 1)})
    for (top, bottom), (name, image) in zip(axes.T, images.items()):
        top.imshow(image)
        top.set_title(name, fontsize=10)
        top.axis("off")
        pairs = list(predictions[name])
        probs = [100 * p for _, p in pairs][::-1]
        bottom.barh([label.split(",")[0][:24] for label, _ in pairs][::-1], probs, color="tab:blue")
        bottom.set(xlim=(0, 100), xlabel="probability (%)")
        bottom.tick_params(axis="y", labelsize=8)
        for y, p in enumerate(probs):
            bottom.text(min(p + 2, 80), y, f"{p:.1f}%", va="center", fontsize=8)
    fig.suptitle(title or f"Top-{len(pairs)} ImageNet classes for each photo", fontsize=12)
    fig.tight_layout()
    return fig


def plot_top_patches(panels: Mapping[str, Mapping[int, Sequence[torch.Tensor]]],
                     title: str | None = None) -> Figure:
    """What channels respond to: a panel per model, a row per channel, its top patches left to right;
    ``panels`` maps a title to ``activations.top_patches``'s ``{channel: [patch, ...]}``."""
    if not panels:
        raise ValueError("nothing to show: pass {'panel title': {channel: [patch, ...]}, ...}.")
    n_rows = len(next(iter(panels.values())))
    if not n_rows or any(len(found) != n_rows for found in panels.values()):
        raise ValueError("every panel needs the same, non-zero number of channels.")
    n_cols = max(len(p) for found in panels.values() for p in found.values())
    fig = plt.figure(figsize=(1.25 * n_cols * len(panels) + 1.0, 1.3 * n_rows + 1.2), layout="constrained")
    subfigs = fig.subfigures(1, len(panels), wspace=0.05, squeeze=False)[0]
    for sub, (label, found) in zip(subfigs, panels.items()):
        axes = sub.subplots(n_rows, n_cols, squeeze=False)
        for row, (channel, patches) in zip(axes, found.items()):
            _show(row, [p.permute(1, 2, 0).numpy() for p in patches])
            row[0].set_ylabel(f"channel {channel}", fontsize=9)
        for j, ax in enumerate(axes[0]):
            ax.set_title(f"#{j + 1}", fontsize=8)
        sub.suptitle(label, fontsize=11)
    fig.suptitle(title or "Top-activating patches: each row is one channel, its strongest photos "
                 "left to right (#1 = strongest)", fontsize=12)
    return fig


# --- features / lesson 02 ------------------------------------------------------------

def plot_projections(panels: Mapping[str, tuple[object, object]], classes: Sequence[str],
                     method: str = "PCA", title: str | None = None) -> Figure:
    """2-D projections of feature sets side by side, points coloured by class: ``panels`` maps a
    title to ``(points, labels)``, ``(n, 2)`` coordinates and ``n`` class indices into ``classes``."""
    if not panels:
        raise ValueError("nothing to plot: pass {'panel title': (points, labels), ...}.")
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    for ax, (label, (points, labels)) in zip(axes[0], panels.items()):
        pts, ys = torch.as_tensor(points).float().numpy(), torch.as_tensor(labels).long().numpy()
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) != len(ys):
            raise ValueError(f"panel {label!r}: expected (n, 2) points and n labels, got "
                             f"{pts.shape} and {ys.shape}.")
        for c, name in enumerate(classes):
            keep = ys == c
            ax.scatter(pts[keep, 0], pts[keep, 1], s=16, alpha=0.8, color=cmap(c % cmap.N), label=name)
        ax.set_title(label, fontsize=11)
        ax.set(xlabel=f"{method} axis 1 (arbitrary units)", ylabel=f"{method} axis 2 (arbitrary units)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=min(len(classes), 8),
               fontsize=9, title="class", markerscale=1.5)
    fig.suptitle(title or f"Features projected to 2-D with {method}, coloured by class", fontsize=12)
    fig.tight_layout(rect=(0, 0.1 if len(classes) <= 8 else 0.16, 1, 1))
    return fig


# --- training / lessons 03-04 ---------------------------------------------------------

def plot_training_curves(history, title: str | None = None) -> Figure:
    """Losses (a thin smoothed line per batch, dots per epoch) and validation accuracy by epoch, from
    a ``records.History`` (stages marked by dotted lines) or a Learner after ``fit``."""
    if hasattr(history, "recorder"):
        history = History.of(history)
    elif not hasattr(history, "epochs") or not hasattr(history, "batches"):
        raise ValueError(f"expected a records.History or a fastai Learner, got {type(history).__name__}.")
    e, b = history.epochs, history.batches
    if not len(e):
        raise ValueError("the history is empty: train first (fit, fit_one_cycle or fine_tune).")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    if len(b):
        ax_loss.plot(b["epoch"], b["loss"], color="tab:blue", alpha=0.45, linewidth=1,
                     label="training loss, each batch (smoothed)")
    ax_loss.plot(e["epoch"], e["train_loss"], "o-", color="tab:blue", label="training loss, end of epoch")
    ax_loss.plot(e["epoch"], e["valid_loss"], "s-", color="tab:orange", label="validation loss")
    ax_loss.set(ylabel="cross-entropy loss (nats)", title="Loss", ylim=(0, None))
    ax_loss.legend(fontsize=8)
    if "accuracy" in e:
        ax_acc.plot(e["epoch"], 100 * e["accuracy"], "s-", color="tab:green", label="validation accuracy")
        ax_acc.set_ylim(0, 100)
        ax_acc.legend(fontsize=8, loc="upper right")
    ax_acc.set(ylabel="validation accuracy (%)", title="Accuracy")
    starts = e.groupby("stage", sort=False)["epoch"].min() - 1
    for ax in (ax_loss, ax_acc):
        ax.set(xlabel="epoch", xlim=(0, float(e["epoch"].max()) + 0.2))
        ax.grid(alpha=0.3)
        for name, start in starts.items() if len(starts) > 1 else ():  # a dotted line per stage
            ax.axvline(start, color="grey", linestyle=":", linewidth=1)
            if ax is ax_acc:  # named along the bottom, where accuracy curves leave room
                ax.text(start, 0.02, f" {name}", transform=ax.get_xaxis_transform(),
                        va="bottom", ha="left", fontsize=7.5, color="dimgray")
    fig.suptitle(title or "Training curves", fontsize=12)
    fig.tight_layout()
    return fig


def plot_seed_comparison(results: Mapping[str, pd.Series], chance: float | None = None,
                         title: str = "Test accuracy by seed") -> Figure:
    """One bar per setting (its mean over seeds) with every seed's result as a dot; ``results``
    maps a setting to its test accuracies (0-1) by seed, as :func:`tlcourse.stats.over_seeds` gives."""
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.8 * len(results)))
    for i, values in enumerate(scores * 100 for scores in results.values()):
        ax.barh(i, values.mean(), color="tab:blue", alpha=0.35, label="mean over seeds" if i == 0 else None)
        ax.plot(values, [i] * len(values), "o", color="tab:blue", label="one seed" if i == 0 else None)
    if chance is not None:
        ax.axvline(chance * 100, color="grey", linestyle=":", label="always guessing one class")
    ax.set(yticks=range(len(results)), yticklabels=list(results), xlim=(0, 100),
           xlabel="test accuracy (%)", title=title)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
