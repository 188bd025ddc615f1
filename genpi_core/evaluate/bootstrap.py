"""Paired bootstrap confidence intervals over held-out examples. Pure numpy; seeded, so repeatable.

"Paired": every resample draws one set of example indices and applies it to every variant, so the
variants' scores stay matched example by example, and recovery = (student - base) / (teacher - base)
is computed inside each resample from the same draw. Percentile intervals.

One evaluation (one adapter) uses :func:`paired_bootstrap` over its held-out inputs. Across training seeds
(the quality benchmark), :func:`two_level_bootstrap` first resamples the seeds, then the held-out inputs
within each drawn seed, so the interval covers training noise as well as the choice of inputs; with one
seed it is exactly :func:`paired_bootstrap`.
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
    _recovery_interval(out, means, recovery_of, level)
    return out


def _recovery_interval(out: dict, means: Mapping[str, np.ndarray], recovery_of, level: float) -> None:
    if recovery_of and all(k in means for k in recovery_of):
        s, b, t = (means[k] for k in recovery_of)
        gap = t - b
        defined = np.abs(gap) >= 1e-12
        out["recovery_undefined"] = int((~defined).sum())
        if defined.any():
            out["recovery"] = list(_interval((s[defined] - b[defined]) / gap[defined], level))


def two_level_bootstrap(
    seeds: Sequence[Mapping[str, Sequence[float]]],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    recovery_of: tuple[str, str, str] | None = ("student", "base", "teacher"),
) -> dict:
    """Intervals over training seeds and held-out inputs: resample the seeds, then the inputs within each.

    Args:
        seeds: one entry per training seed: per variant, one score per held-out example of that seed's
            evaluation (paired across variants, as in :func:`paired_bootstrap`; seeds may differ in size).
            Variants that do not depend on the seed (base, teacher) are simply repeated in every entry.
        resamples, seed, level, recovery_of: as in :func:`paired_bootstrap`.

    Each draw picks ``len(seeds)`` seeds with replacement, and for every pick an independent paired draw
    of that seed's examples; a variant's value in the draw is the mean over the picks of its mean over the
    drawn examples, and recovery is computed from those means. With one seed this is exactly
    :func:`paired_bootstrap` (same draws, same numbers).

    Returns:
        What :func:`paired_bootstrap` returns, plus ``"seeds": len(seeds)``.
    """
    arrays = [{k: np.asarray(v, dtype=float) for k, v in entry.items()} for entry in seeds]
    names = [sorted(entry) for entry in arrays]
    if any(n != names[0] for n in names):
        raise ValueError(f"two-level bootstrap needs the same variants for every seed, got {names}")
    sizes = []
    for i, entry in enumerate(arrays):
        lengths = {len(a) for a in entry.values()}
        if len(lengths) > 1:
            raise ValueError(
                f"two-level bootstrap: seed {i} needs one score per example for every variant, "
                f"got sizes {sorted(lengths)}"
            )
        sizes.append(lengths.pop() if lengths else 0)
    out: dict = {
        "variants": {},
        "recovery": None,
        "recovery_undefined": 0,
        "resamples": resamples,
        "seed": seed,
        "level": level,
        "seeds": len(arrays),
    }
    if not arrays or 0 in sizes or resamples <= 0:
        return out
    k = len(arrays)
    rng = np.random.default_rng(seed)
    # draw order: the example draws of pick 0 (seed 0 first), then of pick 1, ..., the seed picks last, so that
    # with one seed the very first draw is the one paired_bootstrap makes from the same seed
    per_pick: list[list[dict[str, np.ndarray]]] = []  # [pick][training seed] -> variant -> (resamples,) means
    for _pick in range(k):
        row = []
        for entry, n in zip(arrays, sizes):
            idx = rng.integers(0, n, size=(resamples, n))
            row.append({name: a[idx].mean(axis=1) for name, a in entry.items()})
        per_pick.append(row)
    picks = rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), dtype=int)
    slots, draws = np.arange(k)[None, :], np.arange(resamples)[:, None]
    means = {}
    for name in names[0]:
        table = np.stack([np.stack([per_pick[j][s][name] for s in range(k)]) for j in range(k)])  # pick, seed, draw
        means[name] = table[slots, picks, draws].mean(axis=1)  # (resamples, picks) -> mean over the picks
    out["variants"] = {name: list(_interval(m, level)) for name, m in means.items()}
    _recovery_interval(out, means, recovery_of, level)
    return out
