"""Figures of lesson 05: learning curves, data-size sweeps, the freeze-depth sweep and the
measured strategy guide.  Each takes the tables :mod:`tlcourse.experiments` returns, draws
the mean over seeds as a line and the lowest to highest seed as a band, and returns the
matplotlib Figure.  Importing this module changes no global state.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

#: One colour per strategy, the same in every figure of lesson 05.
COLOURS = {"scratch": "tab:gray", "head-only": "tab:blue", "fine-tune": "tab:orange", "freeze": "tab:green"}
ORDER = ("scratch", "head-only", "fine-tune")


def _band(ax, x: str, runs: pd.DataFrame, colour: str, label: str | None, marker: str = "o") -> None:
    stats = runs.groupby(x)["accuracy"].agg(["mean", "min", "max", "count"]).sort_index()
    seeds = int(stats["count"].max())
    ax.plot(stats.index, 100 * stats["mean"], marker=marker, markersize=4, color=colour,
            label=None if label is None else f"{label} (mean of {seeds} seeds)")
    ax.fill_between(stats.index, 100 * stats["min"], 100 * stats["max"], color=colour, alpha=0.2)


def _finish_panel(ax, domain: str, n: int, xlabel: str, ylabel: str, legend_loc: str) -> None:
    """Accuracy axis in percent, labels, grid and legend of one ``(domain, n)`` panel."""
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{domain}, {n} training images a class")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend_loc)


def _chance(ax, chance: float) -> None:
    ax.axhline(100 * chance, color="black", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.0f}%)")


def _log_ticks(ax, values: Sequence[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(list(values))
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()


def plot_learning_curves(curves: pd.DataFrame, panels: Sequence[tuple[str, int]], title: str = "") -> Figure:
    """Validation accuracy against epoch, one panel per ``(domain, per_class)``, one line per strategy.

    ``curves`` is ``experiments.curves(results)``.  The x axis is logarithmic: scratch
    trains for many more epochs than the others, and head-only's epochs are single steps
    on cached features.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (domain, n) in zip(axes[0], panels):
        part = curves[(curves.domain == domain) & (curves.per_class == n)]
        if part.empty:
            raise ValueError(f"no learning curves for {domain} at {n} a class; run them with curve=True.")
        for strategy in ORDER:
            runs = part[part.strategy == strategy]
            if len(runs):
                _band(ax, "epoch", runs, COLOURS[strategy], strategy, marker=".")
        _chance(ax, float(part["chance"].iloc[0]))
        ax.set_xscale("log")
        _finish_panel(ax, domain, n, "epoch (passes over the training images, log scale)",
                      "validation accuracy (%)", "lower right")
    fig.suptitle(title or "Learning curves (band: lowest to highest seed)")
    fig.tight_layout()
    return fig


def plot_size_sweep(results: pd.DataFrame, domains: Sequence[str], title: str = "") -> Figure:
    """Test accuracy against training images a class, one panel per domain, one line per strategy."""
    fig, axes = plt.subplots(1, len(domains), figsize=(5.2 * len(domains), 4.2), squeeze=False)
    main = results[results.strategy.isin(ORDER)]
    for ax, domain in zip(axes[0], domains):
        part = main[main.domain == domain]
        for strategy in ORDER:
            runs = part[part.strategy == strategy]
            if len(runs):
                _band(ax, "per_class", runs, COLOURS[strategy], strategy)
        _chance(ax, float(part["chance"].iloc[0]))
        _log_ticks(ax, sorted(part["per_class"].unique()))
        ax.set_ylim(0, 100)
        ax.set_xlabel("training images a class (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(domain)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Accuracy against the amount of data (band: lowest to highest seed)")
    fig.tight_layout()
    return fig


def plot_freeze_depth(results: pd.DataFrame, sizes: dict[str, int], n_groups: int, title: str = "") -> Figure:
    """Test accuracy against ``k``, the body groups kept frozen after the first epoch, per domain.

    ``k = 0`` is the fine-tune run of the same seed; scratch and head-only (cached features)
    at the same size are drawn as horizontal references.
    """
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.6 * len(sizes), 4.2), squeeze=False)
    for ax, (domain, n) in zip(axes[0], sizes.items()):
        part = results[(results.domain == domain) & (results.per_class == n)]
        sweep = part[part.strategy.isin(["fine-tune", "freeze"])]
        _band(ax, "frozen", sweep, COLOURS["freeze"], "ImageNet start, first k groups frozen")
        for strategy, style in (("head-only", ":"), ("scratch", "-.")):
            ref = part[part.strategy == strategy]
            if len(ref):
                mean = 100 * ref["accuracy"].mean()
                ax.axhline(mean, color=COLOURS[strategy], linestyle=style,
                           label=f"{strategy} (cached features)" if strategy == "head-only" else strategy)
        _chance(ax, float(part["chance"].iloc[0]))
        ks = sorted(sweep["frozen"].unique())
        ax.set_xticks(ks)
        ax.set_xticklabels([f"{k}\n(fine-tune)" if k == 0 else f"{k}\n(head only)" if k == n_groups else str(k)
                            for k in ks])
        _finish_panel(ax, domain, n, f"k: body layer groups frozen, of {n_groups} (counted from the input)",
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
        colour = COLOURS.get(r.best, "tab:purple")
        ax.add_patch(plt.Rectangle((x - 0.48, y - 0.46), 0.96, 0.92, color=colour, alpha=0.35 if r.decided else 0.1))
        best = f"best: {r.best} ({100 * r.best_mean:.0f}%)" + (f", tied with {r.tied}" if r.tied else "")
        if isinstance(r.runner_up, str):
            lead = (f"{'leads' if r.decided else 'ahead of'} {r.runner_up} by {100 * r.margin:.1f} points\n"
                    f"(seeds {100 * r.margin_low:+.1f} to {100 * r.margin_high:+.1f})"
                    + ("" if r.decided else ": not decided"))
        else:
            lead = (f"TIE: {100 * r.margin:+.1f} points\n(seeds {100 * r.margin_low:+.1f} to "
                    f"{100 * r.margin_high:+.1f})")
        text = (f"{r.domain}, {r.per_class} a class\n{best}\n{lead}\n"
                f"articles: {r.advice}\n-> {marks[r.verdict]}")
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylim(1.5, -0.5)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["similar to ImageNet (near)", "different from ImageNet (far)"])
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["little data\n(smallest size)", "much data\n(largest size)"])
    ax.set_xlabel("domain")
    ax.set_ylabel("amount of training data")
    ax.set_title(title or "The strategy guide, measured (pale cell: a tie)")
    fig.tight_layout()
    return fig
