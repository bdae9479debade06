"""The divergence signal's statistics (divergence.py measures it): per-cell, per-language, per-bucket and overall
tests on the per-sample divergence from the reference, and the length-trend test. Pure functions, like gate.py,
whose Verdict, Holm (`decide`) and alpha shares they reuse, so both signals read the same way.

A sample's divergence d_i (oriented: larger is worse; `SampleDivergence.value`) already compares the candidate with
the reference on that sample, so a cell's test is on the mean of d_i against the tolerance T in the signal's own
units (KL and NLL in nats per answer token, top-1 as the share of positions that disagree):
- the reported "drop" is mean(d), with a two-sided (1 - 2*alpha) t interval;
- p is one-sided for H0: E[d] <= T, Student's t on the per-sample values (df = n - 1). A divergence is skewed to the
  right (most samples near the floor, a few far above it), for which this upper-tail test errs on the side of
  passing. A bootstrap test, tried first, erred the other way at the demo's n: with 2 samples in a cell it gave
  p ~ 1/(B+1) whenever both exceeded T. At n = 2 a cell alone fails only on a gross excess; its language, bucket
  and overall averages pool the cells and carry the evidence;
- modes and Holm over the planned family as for accuracy (gate.py): default fails when mean(d) > T and the
  adjusted p < alpha; point when mean(d) > T; strict unless the one-sided upper bound is below T.
Averages over cells (languages, buckets, all) weigh each cell the same: the mean of the cells' means, its variance
the sum of theirs over k^2, with Welch-Satterthwaite degrees of freedom.

Length trend, per candidate and task: the slope of a per-sample quantity (a divergence, or the accuracy drop
reference - candidate in points) against log2 of the bucket, by least squares over the cells' means (each cell
weighs the same), i.e. the change per doubling of the input, with the same t machinery (H0: slope <= T). It needs
two buckets. The tests are exact computations: `seed` and `n_resamples` are accepted (and checked) so that calls
read like gate.py's, and change nothing.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from . import gate
from .errors import UnknownValueError
from .schema import bucket_label, parse_bucket

UNITS = {"kl": "nats/token KL", "nll": "nats/token NLL", "top1": "top-1 disagreement", "accuracy": "points"}
_POWER_Z = 0.8416212335729143  # z of 80% power


def _values(values: Any, where: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size == 0:
        raise gate.GateInputError(f"{where}: no per-sample divergence; a cell needs at least one sample")
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise gate.GateInputError(f"{where}: divergence[{bad}] is {array[bad]}; divergences must be finite")
    return array


def _weighted_t(weights: Sequence[float], cells: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """sum(w_c * mean_c), its standard error and Welch-Satterthwaite degrees of freedom. A cell of one sample has
    no variance of its own: it takes the pooled variance of the cells that have one (none: se is nan)."""
    estimate = float(sum(w * d.mean() for w, d in zip(weights, cells)))
    variances = [float(d.var(ddof=1)) if d.size > 1 else None for d in cells]
    known = [v for v in variances if v is not None]
    if not known:
        return estimate, float("nan"), float("nan")
    pooled = float(np.mean(known))
    terms = [w * w * (v if v is not None else pooled) / d.size for w, v, d in zip(weights, variances, cells)]
    se2 = float(sum(terms))
    dfs = [max(d.size - 1, 1) for d in cells]
    denominator = sum(t * t / df for t, df in zip(terms, dfs))
    df = se2 * se2 / denominator if denominator > 0 else float(sum(dfs))
    return estimate, math.sqrt(se2), df


def _t_test(estimate: float, se: float, df: float, threshold: float, alpha: float) -> tuple[float, float, float]:
    """One-sided p for H0: true value <= threshold, and the two-sided (1 - 2*alpha) interval."""
    if not math.isfinite(se):
        return 1.0, -math.inf, math.inf
    if se == 0:  # every sample the same: the value is known exactly
        return (0.0 if estimate > threshold + 1e-15 else 1.0), estimate, estimate
    p = float(stats.t.sf((estimate - threshold) / se, df))
    half = float(stats.t.ppf(1 - alpha, df)) * se
    return p, estimate - half, estimate + half


def _mdd(se: float, df: float, alpha: float) -> float:
    """The excess over the tolerance found with 80% power at one-sided alpha (normal approximation in df)."""
    return (float(stats.t.ppf(1 - alpha, df)) + _POWER_Z) * se if math.isfinite(se) and se > 0 else 0.0


def _verdict(candidate: str, cell_id: str, level: str, group: str, cells: Sequence[np.ndarray], tolerance: gate.Tolerance,
             signal: str, mode: str, alpha: float, n_resamples: int, what: str) -> gate.Verdict:
    gate._check_settings(mode, alpha, n_resamples)
    k = len(cells)
    observed, se, df = _weighted_t([1 / k] * k, cells)
    p, low, high = _t_test(observed, se, df, tolerance.points, alpha)
    delta = -observed
    ci_low, ci_high = -high, -low
    unit = UNITS[signal]
    outcome, reason = gate._outcome(mode, delta, ci_low, p, tolerance, alpha, 1 - 2 * alpha, adjusted=False, unit=unit)
    notes = []
    if not math.isfinite(se):
        notes.append(f"one sample per cell: no variance to test {what} with, so it cannot fail in default mode")
    if np.all(np.concatenate(cells) == 0):
        notes.append(f"every sample's {signal} is 0: identical to the reference's stored side")
    return gate.Verdict(candidate=candidate, cell_id=cell_id, outcome=outcome, n=int(sum(d.size for d in cells)),
                        reference_mean=0.0, candidate_mean=observed, delta=delta, ci_low=ci_low, ci_high=ci_high,
                        p_value=p, p_adjusted=p, tolerance=tolerance, mode=mode, min_detectable_drop=_mdd(se, df, alpha),
                        warnings=notes, stale=False, reason=reason, ci_level=1 - 2 * alpha, alpha=alpha,
                        p_method=f"one-sided t test of the mean (df {df:.3g})",
                        ci_method="t interval" + (" over the cells' means (Welch-Satterthwaite df)" if k > 1 else ""),
                        p_floor=0.0, n_cells=k, level=level, group=group, null_variance=None, signal=signal, unit=unit)


def compare_divergence(candidate: str, cell_id: str, values: Any, tolerance: gate.Tolerance, signal: str = "kl",
                       mode: str = "default", alpha: float = 0.05, seed: int = 0,
                       n_resamples: int = 2000) -> gate.Verdict:
    """One cell's divergence test (module docstring); the outcome is before Holm (see gate.decide)."""
    if signal not in UNITS or signal == "accuracy":
        raise UnknownValueError("divergence signal", signal, ("kl", "nll", "top1"))
    where = f"cell {cell_id} (candidate {candidate})"
    return _verdict(candidate, cell_id, "cell", "", [_values(values, where)], tolerance, signal, mode, alpha,
                    n_resamples, where)


def gate_divergence(candidate: str, cells: Sequence[tuple[str, Any, str, Any]],
                    tolerances_by_level: Mapping[str, gate.Tolerance], signal: str = "kl", mode: str = "default",
                    alpha: float = 0.05, seed: int = 0, planned: Iterable[Any] | None = None,
                    n_resamples: int = 2000, correction: str = "holm") -> list[gate.Verdict]:
    """Every divergence gate of one candidate, as gate.gate_candidate does for accuracy: `cells` are
    (task, bucket, language, per-sample divergences) of the cells that ran; each level a Holm family over the
    plan at its share of alpha. Returns cells, languages, buckets, then the aggregate ("ALL")."""
    given = [(t, parse_bucket(b), lang, _values(v, f"cell {t}-{b}-{lang} (candidate {candidate})"))
             for t, b, lang, v in cells]
    if not given:
        return []
    keys = gate._plan_keys(planned, [gate.PairedCell(t, b, lang, [0], [0]) for t, b, lang, _ in given])
    shares = gate.alpha_shares(keys)
    out = []
    verdicts = [_verdict(candidate, f"{t}-{bucket_label(b)}-{lang}", "cell", "", [v], tolerances_by_level["cell"],
                         signal, mode, alpha, n_resamples,
                         f"cell {t}-{bucket_label(b)}-{lang}") for t, b, lang, v in given]
    out += gate.decide(verdicts, alpha, family_size=len(keys), alpha_share=shares["cell"], correction=correction)
    for level in ("language", "bucket"):
        groups = gate._level_groups(keys, level)
        if len(groups) <= 1:
            continue
        level_verdicts = []
        for g in groups:
            members = [v for t, b, lang, v in given if gate._group((t, b, lang), level) == g]
            if members:
                level_verdicts.append(_verdict(candidate, gate.level_id(level, g), level, g, members,
                                               tolerances_by_level[level], signal, mode, alpha,
                                               n_resamples, f"{level} {g}"))
        out += gate.decide(level_verdicts, alpha, family_size=len(groups), alpha_share=shares[level],
                           correction=correction)
    agg = _verdict(candidate, "ALL", "aggregate", "", [v for *_, v in given], tolerances_by_level["aggregate"],
                   signal, mode, alpha, n_resamples, "the average")
    return out + gate.decide([agg], alpha, alpha_share=shares["aggregate"], correction=correction)


def length_trend(candidate: str, task: str, cells: Sequence[tuple[Any, Any]], tolerance: gate.Tolerance,
                 signal: str = "kl", mode: str = "default", alpha: float = 0.05, seed: int = 0,
                 n_resamples: int = 2000) -> gate.Verdict:
    """The slope of a per-sample quantity against log2(bucket) over one task's cells (module docstring): `cells`
    are (bucket, per-sample values), several cells per bucket allowed (its languages). A verdict of level "trend",
    id "trend:<task>", whose "drop" is the slope per doubling of the input length."""
    gate._check_settings(mode, alpha, n_resamples)
    if signal not in UNITS:
        raise UnknownValueError("trend signal", signal, tuple(UNITS))
    where = f"length trend of {task} (candidate {candidate})"
    xs = np.array([math.log2(parse_bucket(b)) for b, _ in cells])
    data = [_values(v, where) for _, v in cells]
    if len(set(xs.tolist())) < 2:
        raise gate.GateInputError(f"{where}: a trend needs cells in at least two buckets")
    centred = xs - xs.mean()
    weights = centred / float(np.sum(centred ** 2))  # slope = sum(w_c * mean_c): least squares over cell means
    slope, se, df = _weighted_t(list(weights), data)
    p, low, high = _t_test(slope, se, df, tolerance.points, alpha)
    unit = UNITS[signal] + " per doubling of length"
    delta = -slope
    ci_low, ci_high = -high, -low
    outcome, reason = gate._outcome(mode, delta, ci_low, p, tolerance, alpha, 1 - 2 * alpha, adjusted=False, unit=unit,
                                    what="slope")
    mdd = _mdd(se, df, alpha)
    return gate.Verdict(candidate=candidate, cell_id=f"trend:{task}", outcome=outcome, n=int(sum(d.size for d in data)),
                        reference_mean=0.0, candidate_mean=slope, delta=delta, ci_low=ci_low, ci_high=ci_high,
                        p_value=p, p_adjusted=p, tolerance=tolerance, mode=mode, min_detectable_drop=mdd, warnings=[],
                        stale=False, reason=reason, ci_level=1 - 2 * alpha, alpha=alpha,
                        p_method=f"one-sided t test of the slope (Welch-Satterthwaite df {df:.3g})",
                        ci_method="t interval", p_floor=0.0, n_cells=len(data), level="trend", group=task,
                        null_variance=None, signal=signal, unit=unit)
