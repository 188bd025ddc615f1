"""Paired bootstrap confidence intervals over held-out examples. Pure numpy; seeded, so repeatable.

"Paired": every resample draws one set of example indices and applies it to every variant, so the
variants' scores stay matched example by example, and recovery = (student - base) / (teacher - base)
is computed inside each resample from the same draw. Percentile intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def recovery(student: float, base: float, teacher: float) -> float | None:
    """(student - base) / (teacher - base); None when the prompt changes nothing (teacher == base)."""
    gap = teacher - base
    return None if abs(gap) < 1e-12 else (student - base) / gap


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(
    values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a mean; None for no values or no resamples."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0 or resamples <= 0:
        return None
    return _interval(x[_indices(len(x), resamples, seed)].mean(axis=1), level)


def paired_bootstrap(
    scores: Mapping[str, Sequence[float]],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    recovery_of: tuple[str, str, str] | None = ("student", "base", "teacher"),
) -> dict:
    """Intervals for each variant's mean score and for recovery, from one shared draw of examples.

    Args:
        scores: per variant, one score per example, in the same example order for every variant.
        resamples: bootstrap draws (0 = no intervals).
        seed: seed of the draw.
        level: coverage of the interval, e.g. 0.95.
        recovery_of: (student, base, teacher) names; recovery is skipped when any is missing.

    Returns:
        ``{"variants": {name: [low, high]}, "recovery": [low, high] | None, "recovery_undefined": k,
        "resamples": B, "seed": s, "level": level}``. Draws where teacher == base leave recovery
        undefined; they are dropped from its interval and counted in ``recovery_undefined``.
    """
    arrays = {k: np.asarray(v, dtype=float) for k, v in scores.items()}
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) > 1:
        raise ValueError(f"paired bootstrap needs one score per example for every variant, got sizes {sorted(sizes)}")
    out: dict = {
        "variants": {},
        "recovery": None,
        "recovery_undefined": 0,
        "resamples": resamples,
        "seed": seed,
        "level": level,
    }
    n = sizes.pop() if sizes else 0
    if n == 0 or resamples <= 0:
        return out
    idx = _indices(n, resamples, seed)
    means = {k: a[idx].mean(axis=1) for k, a in arrays.items()}
    out["variants"] = {k: list(_interval(m, level)) for k, m in means.items()}
    if recovery_of and all(k in means for k in recovery_of):
        s, b, t = (means[k] for k in recovery_of)
        gap = t - b
        defined = np.abs(gap) >= 1e-12
        out["recovery_undefined"] = int((~defined).sum())
        if defined.any():
            out["recovery"] = list(_interval((s[defined] - b[defined]) / gap[defined], level))
    return out
