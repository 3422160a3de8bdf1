"""Figures of lesson 05: learning curves, data-size sweeps, the freeze-depth sweep and the
measured strategy guide.  Each takes the tables :mod:`tlcourse.experiments` returns, draws
the mean over seeds as a line and the lowest to highest seed as a band, and returns the
matplotlib Figure.  Importing this module changes no global state."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

#: One colour per strategy, the same in every figure of lesson 05.
COLOURS = {"scratch": "tab:gray", "head-only": "tab:blue", "fine-tune": "tab:orange", "freeze": "tab:green"}
ORDER = ("scratch", "head-only", "fine-tune")


def _band(ax, x: str, runs: pd.DataFrame, colour: str, label: str, marker: str = "o") -> None:
    stats = runs.groupby(x)["accuracy"].agg(["mean", "min", "max", "count"]).sort_index()
    ax.plot(stats.index, 100 * stats["mean"], marker=marker, markersize=4, color=colour,
            label=f"{label} (mean of {int(stats['count'].max())} seeds)")
    ax.fill_between(stats.index, 100 * stats["min"], 100 * stats["max"], color=colour, alpha=0.2)


def _bands(ax, x: str, part: pd.DataFrame, marker: str = "o") -> None:
    """One band per strategy of :data:`ORDER` that ran in ``part``."""
    for strategy in ORDER:
        runs = part[part.strategy == strategy]
        if len(runs):
            _band(ax, x, runs, COLOURS[strategy], strategy, marker)


def _finish_panel(ax, part: pd.DataFrame, title: str, xlabel: str, ylabel: str,
                  legend_loc: str = "lower right") -> None:
    """The chance line of ``part``, accuracy axis in percent, labels, grid and legend of one panel."""
    chance = 100 * float(part["chance"].iloc[0])
    ax.axhline(chance, color="black", linestyle="--", linewidth=1, label=f"chance ({chance:.0f}%)")
    ax.set(ylim=(0, 100), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend_loc)


def plot_learning_curves(curves: pd.DataFrame, panels: Sequence[tuple[str, int]], title: str = "") -> Figure:
    """Validation accuracy against epoch, one panel per ``(domain, per_class)``, one line per strategy,
    from ``experiments.curves(results)``.  The x axis is logarithmic: scratch trains for many more
    epochs than the others, and head-only's epochs are single steps on cached features."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (domain, n) in zip(axes[0], panels):
        part = curves[(curves.domain == domain) & (curves.per_class == n)]
        if part.empty:
            raise ValueError(f"no learning curves for {domain} at {n} a class; run them with curve=True.")
        _bands(ax, "epoch", part, marker=".")
        ax.set_xscale("log")
        _finish_panel(ax, part, f"{domain}, {n} training images a class",
                      "epoch (passes over the training images, log scale)", "validation accuracy (%)")
    fig.suptitle(title or "Learning curves (band: lowest to highest seed)")
    fig.tight_layout()
    return fig


def plot_size_sweep(results: pd.DataFrame, domains: Sequence[str], title: str = "") -> Figure:
    """Test accuracy against training images a class, one panel per domain, one line per strategy."""
    fig, axes = plt.subplots(1, len(domains), figsize=(5.2 * len(domains), 4.2), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        part = results[(results.domain == domain) & results.strategy.isin(ORDER)]
        _bands(ax, "per_class", part)
        sizes = sorted(part["per_class"].unique())
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(v) for v in sizes])
        ax.minorticks_off()
        _finish_panel(ax, part, domain, "training images a class (log scale)", "test accuracy (%)")
    fig.suptitle(title or "Accuracy against the amount of data (band: lowest to highest seed)")
    fig.tight_layout()
    return fig


def plot_freeze_depth(results: pd.DataFrame, sizes: dict[str, int], n_groups: int, title: str = "") -> Figure:
    """Test accuracy against ``k``, the body groups kept frozen after the first epoch, per domain.
    ``k = 0`` is the fine-tune run of the same seed; scratch and head-only (cached features) at the
    same size are drawn as horizontal references."""
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.6 * len(sizes), 4.2), squeeze=False)
    for ax, (domain, n) in zip(axes[0], sizes.items()):
        part = results[(results.domain == domain) & (results.per_class == n)]
        sweep = part[part.strategy.isin(["fine-tune", "freeze"])]
        _band(ax, "frozen", sweep, COLOURS["freeze"], "ImageNet start, first k groups frozen")
        for strategy, style, label in (("head-only", ":", "head-only (cached features)"),
                                       ("scratch", "-.", "scratch")):
            ref = part[part.strategy == strategy]
            if len(ref):
                ax.axhline(100 * ref.accuracy.mean(), color=COLOURS[strategy], linestyle=style, label=label)
        ks = sorted(sweep["frozen"].unique())
        names = {n_groups: "\n(head only)", 0: "\n(fine-tune)"}
        ax.set_xticks(ks, [f"{k}{names.get(k, '')}" for k in ks])
        _finish_panel(ax, part, f"{domain}, {n} training images a class",
                      f"k: body layer groups frozen, of {n_groups} (counted from the input)",
                      "test accuracy (%)", "lower left")
    fig.suptitle(title or "Freeze the first k layer groups, train the rest (band: lowest to highest seed)")
    fig.tight_layout()
    return fig


def plot_guide(guide: pd.DataFrame, title: str = "") -> Figure:
    """The measured 2x2 strategy guide: amount of data (rows) by similarity (columns)."""
    fig, ax = plt.subplots(figsize=(11, 5.2))
    cols, rows = ["near", "far"], ["little", "much"]
    marks = {"agrees": "agrees with the articles", "disagrees": "DISAGREES with the articles",
             "tie": "tie: not decided by these runs", "not run": "advised strategy not run"}
    for r in guide.itertuples():
        x, y = cols.index(r.similarity), rows.index(r.amount)
        ax.add_patch(plt.Rectangle((x - 0.48, y - 0.46), 0.96, 0.92, color=COLOURS.get(r.best, "tab:purple"),
                                   alpha=0.35 if r.decided else 0.1))
        best = f"best: {r.best} ({100 * r.best_mean:.0f}%)" + (f", tied with {r.tied}" if r.tied else "")
        seeds = f"(seeds {100 * r.margin_low:+.1f} to {100 * r.margin_high:+.1f})"
        if isinstance(r.runner_up, str):
            lead = (f"{'leads' if r.decided else 'ahead of'} {r.runner_up} by {100 * r.margin:.1f} points\n"
                    + seeds + ("" if r.decided else ": not decided"))
        else:
            lead = f"TIE: {100 * r.margin:+.1f} points\n{seeds}"
        ax.text(x, y, f"{r.domain}, {r.per_class} a class\n{best}\n{lead}\narticles: {r.advice}\n"
                      f"-> {marks[r.verdict]}", ha="center", va="center", fontsize=8.5)
    ax.set(xlim=(-0.5, 1.5), ylim=(1.5, -0.5), xlabel="domain", ylabel="amount of training data",
           title=title or "The strategy guide, measured (pale cell: a tie)")
    ax.set_xticks([0, 1], ["similar to ImageNet (near)", "different from ImageNet (far)"])
    ax.set_yticks([0, 1], ["little data\n(smallest size)", "much data\n(largest size)"])
    fig.tight_layout()
    return fig
