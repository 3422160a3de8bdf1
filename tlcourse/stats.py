"""Reading results over seeds: one rule for "clearly different", used by every lesson.

Three seeds of a small experiment scatter by several points, so the course never
reads a difference of means on its own.  :func:`decided` is the rule: a difference
counts when every seed agrees on its sign and its mean is larger than the noise
(the seeds' own spread, or a test set's standard error); anything less is a tie.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm


def decided(diff: pd.Series, noise: float) -> int:
    """+1 when every per-seed difference in ``diff`` is above 0 and their mean above ``noise``,
    -1 for the same below 0, else 0 (a tie)."""
    diff = diff.dropna()
    for sign in (1, -1):
        if len(diff) and (sign * diff > 0).all() and sign * diff.mean() > noise:
            return sign
    return 0


def over_seeds(settings: Mapping[str, Callable[[int], float]], seeds: Sequence[int],
               progress: bool = True) -> dict[str, pd.Series]:
    """Run every ``settings[name](seed)`` for every seed: name -> its results indexed by seed, with
    one progress bar, keeping every single result (not only the mean) for the lessons' comparisons."""
    out: dict[str, dict[int, float]] = {name: {} for name in settings}
    for name, seed in tqdm([(n, s) for n in settings for s in seeds], desc="runs", disable=not progress):
        out[name][seed] = float(settings[name](seed))
    return {name: pd.Series(values, name=name).rename_axis("seed") for name, values in out.items()}


def spread_table(results: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Mean, spread (standard deviation), lowest and highest result of each setting, in %."""
    rows = {name: {"mean": r.mean(), "spread (std)": r.std(ddof=1) if len(r) > 1 else float("nan"),
                   "lowest": r.min(), "highest": r.max(), "seeds": len(r)} for name, r in results.items()}
    table = pd.DataFrame(rows).T
    table[["mean", "spread (std)", "lowest", "highest"]] *= 100
    return table.round(1)


def verdict(a: pd.Series, b: pd.Series) -> str:
    """``"ahead"``, ``"behind"`` or ``"tie"``: is ``a`` clearly above ``b``, seed for seed?  Clearly:
    better on every seed, by more on average than the larger of the two settings' spreads over
    seeds.  Anything less is a tie, because three seeds cannot tell it from noise."""
    noise = max(a.std(ddof=1), b.std(ddof=1)) if min(len(a), len(b)) > 1 else float("inf")
    return {1: "ahead", -1: "behind", 0: "tie"}[decided(a - b, noise)]


def compare(a: pd.Series, b: pd.Series, name_a: str, name_b: str) -> str:
    """One sentence comparing two settings' results over the same seeds, with the spread."""
    diff = (a - b).mean() * 100
    spread = max(a.std(ddof=1), b.std(ddof=1)) * 100
    head = (f"{name_a}: {a.mean():.1%} against {name_b}: {b.mean():.1%} "
            f"(mean of {len(a)} seeds, difference {diff:+.1f} points, spread up to {spread:.1f} points): ")
    outcome = verdict(a, b)
    if outcome == "tie":
        return head + "not clearly different with this many seeds."
    winner, loser = (name_a, name_b) if outcome == "ahead" else (name_b, name_a)
    return head + f"{winner} is ahead of {loser} on every seed, by more than the spread."
