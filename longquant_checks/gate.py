"""The gate's statistics: paired per-cell comparisons of a candidate against the reference, Holm over cells,
the per-candidate average, tolerances and their sources. Pure functions: no pytest, no engines, no files.

Scores are per-sample floats in [0, 1]; accuracies, deltas, tolerances and intervals are in points (0-100).
delta = candidate - reference (negative = worse); drop = -delta.

Modes (what "fail" means for a cell whose tolerance is T points):
- ``point``:   the observed drop exceeds T. Ignores noise: at n=50 one sample is 2 points.
- ``default``: the observed drop exceeds T *and* the candidate is significantly worse (one-sided p < alpha,
               Holm-adjusted over the candidate's cells by `decide`). Fails only on evidence.
- ``strict``:  non-inferiority: passes only if the one-sided (1 - alpha) upper bound of the drop is below T,
               i.e. the lower end of the two-sided (1 - 2*alpha) interval of delta, the interval every Verdict
               reports (90% at alpha = 0.05). Passes only on evidence; small n fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

from .checkpoints.spec import PRECISIONS
from .errors import LongquantError, UnknownValueError
from .schema import bucket_label, parse_bucket

MODES = ("default", "strict", "point")
__all__ = [
    "DEFAULT_AGGREGATE_TOLERANCE", "DEFAULT_CELL_TOLERANCE", "GateInputError", "MODES", "PRECISIONS", "Tolerance",
    "ToleranceRule", "Verdict", "aggregate", "aggregate_tolerance", "compare_cell", "decide", "format_failure",
    "holm", "min_detectable_drop", "resolve_tolerance",
]

# Allowed drop in points, per precision class. Evidence: on long-context tasks FP8/INT8 lose ~0.2-0.8 points
# on average, int4 (GPTQ/AWQ) ~1.8-2.7, nf4 ~6.9; Neural Magic reports >= 99% recovery for 8-bit. Single cells
# swing far more than averages (the source study's FP8 cells swing -12/+10 points at n=50), so a cell gets
# several times the average's allowance: it should catch a broken cell, not sampling noise. 16-bit is the
# reference's own class (bf16 vs fp16, another engine): it should differ only by kernel nondeterminism.
DEFAULT_CELL_TOLERANCE: dict[str, float] = {"16-bit": 2.0, "8-bit": 5.0, "4-bit": 10.0}
# The per-candidate average: a bit above the studies' averages (8-bit 0.8, int4 2.7), below nf4's 6.9 for 4-bit.
DEFAULT_AGGREGATE_TOLERANCE: dict[str, float] = {"16-bit": 1.0, "8-bit": 2.0, "4-bit": 5.0}

_EPS = 1e-9            # points: float noise allowed when comparing a drop with a tolerance
_EXACT_MAX_FLIPS = 16  # sign-flip tests enumerate all 2**k sign patterns up to this many nonzero differences
_CHUNK = 2_000_000     # elements per resampling block: bounds memory for big n


class GateInputError(LongquantError, ValueError):
    """Scores, tolerances or settings given to the gate are malformed."""


# --------------------------------------------------------------------------------------------- tolerances

@dataclass(frozen=True)
class ToleranceRule:
    """An override: matches cells; None fields match anything. Exactly one of `points`/`relative` is set.

    `points` is an allowed drop in absolute accuracy points; `relative` an allowed drop in percent of the
    reference's accuracy in that cell (5 -> 5% of 62.0 = 3.1 points). `bucket` takes tokens or a label ("4K").
    """

    points: float | None = None
    relative: float | None = None
    precision: str | None = None
    task: str | None = None
    bucket: int | None = None
    language: str | None = None

    def __post_init__(self) -> None:
        if (self.points is None) == (self.relative is None):
            raise GateInputError(f"tolerance rule {self.selector() or '(all cells)'}: give exactly one of `points` "
                                 f"(absolute drop in accuracy points) or `relative` (% of the reference accuracy); "
                                 f"got points={self.points!r}, relative={self.relative!r}")
        for name in ("points", "relative"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise GateInputError(f"tolerance rule {self.selector() or '(all cells)'}: {name}={value!r} must be "
                                     "a finite number >= 0")
        if self.relative is not None and self.relative > 100:
            raise GateInputError(f"tolerance rule {self.selector() or '(all cells)'}: relative={self.relative!r} "
                                 "is a percent of the reference accuracy and must be in [0, 100]")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UnknownValueError("precision", self.precision, PRECISIONS)
        if self.bucket is not None:
            object.__setattr__(self, "bucket", parse_bucket(self.bucket))

    @property
    def specificity(self) -> int:
        return sum(v is not None for v in (self.precision, self.task, self.bucket, self.language))

    def matches(self, precision: str, task: str, bucket: int, language: str) -> bool:
        return ((self.precision is None or self.precision == precision) and (self.task is None or self.task == task)
                and (self.bucket is None or self.bucket == bucket)
                and (self.language is None or self.language == language))

    def selector(self) -> str:
        parts = [f"precision={self.precision}" if self.precision is not None else "",
                 f"task={self.task}" if self.task is not None else "",
                 f"bucket={bucket_label(self.bucket)}" if self.bucket is not None else "",
                 f"language={self.language}" if self.language is not None else ""]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Tolerance:
    """The allowed drop for one cell (or the average), in points, and where it came from."""

    points: float
    source: str

    def __post_init__(self) -> None:
        if not (isinstance(self.points, (int, float)) and math.isfinite(self.points) and self.points >= 0):
            raise GateInputError(f"tolerance points={self.points!r} must be a finite number >= 0")


def _check_precision(precision: str, table: Mapping[str, float]) -> float:
    if precision not in PRECISIONS:
        raise UnknownValueError("precision", precision, PRECISIONS)
    if precision not in table:
        raise GateInputError(f"no default tolerance for precision {precision!r}; defaults cover "
                             f"{', '.join(table) or 'nothing'}")
    return float(table[precision])


def resolve_tolerance(precision: str, task: str, bucket: int, language: str, reference_mean_points: float,
                      rules: Sequence[ToleranceRule] = (), defaults: Mapping[str, float] | None = None) -> Tolerance:
    """The cell's tolerance: the most specific matching rule (most non-None selectors; ties: the later rule,
    so a user's config can override what came before), else the precision's default."""
    default = _check_precision(precision, DEFAULT_CELL_TOLERANCE if defaults is None else defaults)
    if not 0 <= reference_mean_points <= 100:
        raise GateInputError(f"reference_mean_points={reference_mean_points!r} must be in [0, 100] (points)")
    best: ToleranceRule | None = None
    for rule in rules:
        if rule.matches(precision, task, bucket, language) and (best is None or rule.specificity >= best.specificity):
            best = rule
    if best is None:
        return Tolerance(default, f"default for {precision} ({default:g} points)")
    where = best.selector() or "all cells"
    if best.points is not None:
        return Tolerance(float(best.points), f"override {where} ({best.points:g} points)")
    points = best.relative / 100 * reference_mean_points
    return Tolerance(points, f"override {where} (relative {best.relative:g}% of {reference_mean_points:.1f} "
                             f"= {points:.2f} points)")


def aggregate_tolerance(precision: str, defaults: Mapping[str, float] | None = None) -> Tolerance:
    """The per-candidate average's tolerance for a precision class."""
    points = _check_precision(precision, DEFAULT_AGGREGATE_TOLERANCE if defaults is None else defaults)
    return Tolerance(points, f"default average for {precision} ({points:g} points)")


# ----------------------------------------------------------------------------------------------- verdicts

@dataclass
class Verdict:
    """One paired comparison (a cell, or "ALL" for the average). Means, delta, interval and tolerance in points.

    `ci_low`/`ci_high` is the two-sided (1 - 2*alpha) interval of delta (`ci_level`, 0.90 at alpha 0.05), so its
    lower end is the one-sided (1 - alpha) bound strict mode uses. `p_value` is one-sided ("candidate worse",
    H0: no difference); `p_adjusted` is Holm's over the family given to `decide` (== p_value before).
    """

    candidate: str
    cell_id: str
    outcome: str
    n: int
    reference_mean: float
    candidate_mean: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    tolerance: Tolerance
    mode: str
    min_detectable_drop: float
    warnings: list[str]
    stale: bool
    reason: str
    ci_level: float = 0.90
    alpha: float = 0.05
    p_method: str = ""
    ci_method: str = ""
    p_floor: float = 0.0  # the smallest p-value the test could give here (exact: 0.5**k; Monte Carlo: 1/(B+1))
    n_cells: int = 1
    holm_family: int = 1

    @property
    def drop(self) -> float:
        return -self.delta

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ input checks

def _scores(values: Any, name: str, where: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise GateInputError(f"{where}: {name} must be a sequence of numbers in [0, 1] ({exc})") from exc
    if array.ndim != 1:
        raise GateInputError(f"{where}: {name} must be a flat sequence of per-sample scores, got shape {array.shape}")
    if array.size == 0:
        raise GateInputError(f"{where}: {name} is empty; a cell needs at least one paired sample")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise GateInputError(f"{where}: {name}[{bad[0]}] is {array[bad[0]]}; scores must be finite numbers in [0, 1]")
    bad = np.flatnonzero((array < 0) | (array > 1))
    if bad.size:
        raise GateInputError(f"{where}: {name}[{bad[0]}] = {array[bad[0]]:g} is outside [0, 1]; scores are "
                             "per-sample fractions (0 = wrong, 1 = right)")
    return array


def _paired(reference_scores: Any, candidate_scores: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    ref = _scores(reference_scores, "reference_scores", where)
    cand = _scores(candidate_scores, "candidate_scores", where)
    if ref.size != cand.size:
        raise GateInputError(f"{where}: candidate_scores has {cand.size} scores but reference_scores has {ref.size}; "
                             "they must be paired (the same samples in the same order)")
    return ref, cand


def _check_settings(mode: str, alpha: float, n_resamples: int) -> None:
    if mode not in MODES:
        raise UnknownValueError("mode", mode, MODES)
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 0.5):
        raise GateInputError(f"alpha={alpha!r} must be in (0, 0.5), e.g. 0.05")
    if not (isinstance(n_resamples, (int, np.integer)) and n_resamples >= 1):
        raise GateInputError(f"n_resamples={n_resamples!r} must be a positive integer, e.g. 2000")


def _is_binary(*arrays: np.ndarray) -> bool:
    return all(bool(np.all((a == 0) | (a == 1))) for a in arrays)


# ------------------------------------------------------------------------------------------------ tests

def _mcnemar_p(losses: int, wins: int) -> float:
    """Exact one-sided McNemar: under H0 each discordant pair goes against the candidate with probability 1/2."""
    if losses + wins == 0:
        return 1.0
    return float(stats.binomtest(losses, losses + wins, 0.5, alternative="greater").pvalue)


def _sign_flip_p(weighted: np.ndarray, rng: np.random.Generator, n_resamples: int) -> tuple[float, str, float]:
    """One-sided p of "the (weighted) mean difference is this low" under random signs of each difference.

    Under H0 (the two models are exchangeable on each sample) every difference is equally likely to have
    either sign; the p-value is the share of sign patterns whose sum is <= the observed one.
    """
    nonzero = weighted[weighted != 0]
    k = nonzero.size
    if k == 0:
        return 1.0, "sign-flip permutation (no differences)", 1.0
    observed = float(nonzero.sum())
    size = np.abs(nonzero)
    slack = 1e-9 * float(size.sum())  # ties in float sums must count as ties
    if k <= _EXACT_MAX_FLIPS:
        patterns = np.arange(2 ** k)[:, None] >> np.arange(k) & 1
        sums = (patterns * 2 - 1) @ size
        return float(np.mean(sums <= observed + slack)), "sign-flip permutation (exact)", 0.5 ** k
    at_most = 0
    rows = max(1, _CHUNK // k)
    for start in range(0, n_resamples, rows):
        signs = rng.integers(0, 2, size=(min(rows, n_resamples - start), k), dtype=np.int8) * 2 - 1
        at_most += int(np.count_nonzero(signs @ size <= observed + slack))
    # (1 + count) / (1 + B) counts the observed pattern too, so the test is valid at any B.
    floor = 1 / (n_resamples + 1)
    return (1 + at_most) * floor, f"sign-flip permutation (Monte Carlo, {n_resamples} resamples)", max(floor, 0.5 ** k)


def _tango_interval(wins: int, losses: int, n: int, z: float) -> tuple[float, float]:
    """Tango's (1998) asymptotic score interval for a paired difference of proportions (as fractions).

    Delta = P(candidate right, reference wrong) - P(candidate wrong, reference right). The interval is every
    Delta whose score statistic, with the nuisance discordance at its constrained MLE, is within +-z.
    """
    estimate = (wins - losses) / n

    def score(delta: float) -> float:
        a = 2 * n
        b = -wins - losses + (2 * n - wins + losses) * delta
        c = -losses * delta * (1 - delta)
        q = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)  # MLE of P(cand wrong, ref right) given delta
        variance = n * (2 * q + delta * (1 - delta))
        numerator = wins - losses - n * delta
        if variance <= 0:
            return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
        return numerator / math.sqrt(variance)

    edge = 1e-12
    low = -1.0
    if estimate > -1 and score(-1 + edge) > z:
        low = optimize.brentq(lambda d: score(d) - z, -1 + edge, estimate, xtol=1e-12)
    high = 1.0
    if estimate < 1 and score(1 - edge) < -z:
        high = optimize.brentq(lambda d: score(d) + z, estimate, 1 - edge, xtol=1e-12)
    return low, high


def _bootstrap_means(diffs: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of the paired differences."""
    n = diffs.size
    means = np.empty(n_resamples)
    rows = max(1, _CHUNK // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        means[start:stop] = diffs[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def _zero_discordance_bound(n: int, z: float) -> float:
    """Tango's interval half-width when no pair differs: z^2 / (n + z^2). Used so "no disagreement seen in
    10 samples" does not read as a zero-width interval (the bootstrap would give [0, 0])."""
    return z * z / (n + z * z)


# -------------------------------------------------------------------------------------------- power

def min_detectable_drop(n: int, reference_mean_points: float, alpha: float = 0.05, power: float = 0.8,
                        discordance: float | None = None) -> float:
    """The smallest true drop (points) a one-sided paired test at `alpha` detects with `power`, for n pairs.

    Normal approximation of the paired difference: MDD = (z_{1-alpha} + z_{power}) * sqrt(discordance / n),
    where `discordance` is E[d^2], the per-sample disagreement (for 0/1 scores: the share of discordant pairs;
    under H0 it is the sign-flip test's variance). Unless given, assume the two models err independently at the
    reference's accuracy p: 2*p*(1-p). That is pessimistic for good quantizations (they agree more) and right
    for broken ones. It is floored at 1/n, since a drop itself creates disagreement, and the result at
    ceil(log2(1/alpha))/n: with 0/1 scores fewer discordant pairs than that, all against the candidate, can never
    reach p < alpha in the exact test (5 pairs at alpha 0.05). Capped at 100 points.
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise GateInputError(f"n={n!r} must be a positive integer (paired samples)")
    if not 0 <= reference_mean_points <= 100:
        raise GateInputError(f"reference_mean_points={reference_mean_points!r} must be in [0, 100] (points)")
    if not 0 < alpha < 0.5:
        raise GateInputError(f"alpha={alpha!r} must be in (0, 0.5)")
    if not 0 < power < 1:
        raise GateInputError(f"power={power!r} must be in (0, 1), e.g. 0.8")
    if discordance is None:
        p = reference_mean_points / 100
        discordance = 2 * p * (1 - p)
    elif not 0 <= discordance <= 1:
        raise GateInputError(f"discordance={discordance!r} must be in [0, 1] (a share of samples)")
    return _mdd_points(max(discordance, 1 / n) / n, n, alpha, power)


def _mdd_points(null_variance: float, n: int, alpha: float, power: float) -> float:
    """MDD (points) from the null variance of the mean difference (fractions), floored by the exact test."""
    z_sum = stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)
    exact_floor = math.ceil(math.log2(1 / alpha)) / n
    return float(min(100.0, 100 * max(z_sum * math.sqrt(null_variance), exact_floor)))


# -------------------------------------------------------------------------------------------- outcomes

def _outcome(mode: str, delta: float, ci_low: float, p: float, tolerance: Tolerance, alpha: float,
             ci_level: float, adjusted: bool) -> tuple[str, str]:
    drop, tol = -delta, tolerance.points
    over = drop > tol + _EPS
    if mode == "point":
        if over:
            return "fail", f"observed drop {drop:.1f} points exceeds the tolerance {tol:g} (point mode ignores noise)"
        return "pass", f"observed drop {max(drop, 0):.1f} points is within the tolerance {tol:g} (point mode)"
    if mode == "strict":
        bound = -ci_low
        level = f"one-sided {100 * (1 - alpha):g}%"
        if bound < tol - _EPS:
            return "pass", (f"non-inferior: the {level} upper bound of the drop, {bound:.1f} points, "
                            f"is below the tolerance {tol:g}")
        return "fail", (f"cannot rule out a drop of {bound:.1f} points ({level} upper bound; "
                        f"{100 * ci_level:g}% interval's end) >= the tolerance {tol:g}")
    which = "Holm-adjusted p" if adjusted else "p"
    if not over:
        return "pass", f"observed drop {max(drop, 0):.1f} points is within the tolerance {tol:g}"
    if p < alpha:
        return "fail", (f"observed drop {drop:.1f} points exceeds the tolerance {tol:g} and is significant "
                        f"({which} = {p:.3g} < {alpha:g})")
    return "pass", (f"observed drop {drop:.1f} points exceeds the tolerance {tol:g} but is not significant "
                    f"({which} = {p:.3g} >= {alpha:g}); more samples would tell")


def _warnings(n: int, mdd: float, tolerance: Tolerance, delta: float, what: str) -> tuple[list[str], bool]:
    notes = []
    if mdd > tolerance.points + _EPS:
        notes.append(f"n={n} cannot resolve a {tolerance.points:g}-point tolerance (minimal detectable drop "
                     f"{mdd:.1f} points); raise samples")
    stale = delta > tolerance.points + _EPS
    if stale:
        notes.append(f"the candidate beats the reference by {delta:.1f} points in {what}, more than the tolerance "
                     f"{tolerance.points:g}: the reference baseline may be stale; re-run it")
    return notes, stale


# ---------------------------------------------------------------------------------------------- public

def compare_cell(candidate: str, cell_id: str, reference_scores: Any, candidate_scores: Any, tolerance: Tolerance,
                 mode: str = "default", alpha: float = 0.05, seed: int = 0, n_resamples: int = 2000) -> Verdict:
    """One cell: paired scores of the same samples in the same order. Outcome is before Holm (see `decide`).

    p-value (one-sided, "candidate worse", H0: no difference): 0/1 scores -> exact McNemar (binomial test on
    the discordant pairs); partial credit -> paired sign-flip permutation test of the mean difference (exact
    over all 2**k sign patterns for k <= 16 nonzero differences, else `n_resamples` random flips).

    Interval of delta, two-sided (1 - 2*alpha): 0/1 scores -> Tango's asymptotic score interval for paired
    proportions, one of the intervals Fagerland, Lydersen & Laake (2014) recommend. Unlike a percentile
    bootstrap it does not collapse to [0, 0] when no pair differs (then it is +-z^2/(n+z^2)), and its exact
    coverage at n=50 stays near nominal (0.87-0.98 for the 90% interval in tests/test_gate.py).
    Partial credit -> paired bootstrap percentile interval (`n_resamples`); when no pair differs it falls back
    to Tango's zero-discordance width. Everything random comes from np.random.default_rng(seed).
    """
    _check_settings(mode, alpha, n_resamples)
    ref, cand = _paired(reference_scores, candidate_scores, f"cell {cell_id} (candidate {candidate})")
    n = ref.size
    diffs = cand - ref
    rng = np.random.default_rng(seed)
    z = float(stats.norm.ppf(1 - alpha))
    delta = 100 * float(diffs.mean())

    if _is_binary(ref, cand):
        losses, wins = int(np.sum(diffs < 0)), int(np.sum(diffs > 0))
        p, p_method, p_floor = _mcnemar_p(losses, wins), "exact McNemar (one-sided binomial)", 0.5 ** (losses + wins)
        low, high = _tango_interval(wins, losses, n, z)
        ci_method = "Tango score interval"
    else:
        p, p_method, p_floor = _sign_flip_p(diffs, rng, n_resamples)
        if np.any(diffs != 0):
            low, high = np.quantile(_bootstrap_means(diffs, rng, n_resamples), [alpha, 1 - alpha])
            ci_method = f"paired bootstrap percentile ({n_resamples} resamples)"
        else:
            low, high = -_zero_discordance_bound(n, z), _zero_discordance_bound(n, z)
            ci_method = "zero-discordance score bound"
    # The point estimate always lies inside its interval (percentile intervals can miss it by a hair).
    ci_low, ci_high = min(100 * float(low), delta), max(100 * float(high), delta)

    mdd = _mdd_points(max(float(np.mean(diffs ** 2)), 1 / n) / n, n, alpha, 0.8)
    notes, stale = _warnings(n, mdd, tolerance, delta, f"cell {cell_id}")
    outcome, reason = _outcome(mode, delta, ci_low, p, tolerance, alpha, 1 - 2 * alpha, adjusted=False)
    return Verdict(candidate=candidate, cell_id=cell_id, outcome=outcome, n=n, reference_mean=100 * float(ref.mean()),
                   candidate_mean=100 * float(cand.mean()), delta=delta, ci_low=ci_low, ci_high=ci_high, p_value=p,
                   p_adjusted=p, tolerance=tolerance, mode=mode, min_detectable_drop=mdd, warnings=notes, stale=stale,
                   reason=reason, ci_level=1 - 2 * alpha, alpha=alpha, p_method=p_method, ci_method=ci_method,
                   p_floor=p_floor)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order): controls the family-wise error rate at any dependence."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))  # monotone: never below a smaller p's
        adjusted[index] = running
    return adjusted.tolist()


def decide(verdicts: Sequence[Verdict], alpha: float = 0.05) -> list[Verdict]:
    """Holm over the family given (one candidate's cells in one run): fills p_adjusted; "default" verdicts take
    their outcome from it (fail iff drop > tolerance and p_adjusted < alpha). point/strict outcomes stand.
    Returns new Verdicts in the same order."""
    if not 0 < alpha < 0.5:
        raise GateInputError(f"alpha={alpha!r} must be in (0, 0.5), e.g. 0.05")
    m = len(verdicts)
    decided = []
    for v, p_adj in zip(verdicts, holm([v.p_value for v in verdicts])):
        notes = list(v.warnings)
        outcome, reason = v.outcome, v.reason
        if v.mode == "default":
            outcome, reason = _outcome(v.mode, v.delta, v.ci_low, p_adj, v.tolerance, alpha, v.ci_level, m > 1)
            # The strictest Holm threshold is alpha/m; a test that cannot go that low cannot fail this cell.
            if v.drop > v.tolerance.points + _EPS and v.p_floor >= alpha / m and m > 1:
                fix = "raise n_resamples" if "Monte Carlo" in v.p_method else "raise samples"
                note = (f"the smallest p-value this test can give here ({v.p_floor:.2g}) may not clear Holm's "
                        f"threshold over {m} cells (down to {alpha / m:.2g}); {fix}")
                if note not in notes:
                    notes.append(note)
        decided.append(replace(v, p_adjusted=p_adj, outcome=outcome, reason=reason, warnings=notes, holm_family=m))
    return decided


def aggregate(candidate: str, pairs: Sequence[tuple[Sequence[float], Sequence[float]]], tolerance: Tolerance,
              mode: str = "default", alpha: float = 0.05, seed: int = 0, n_resamples: int = 2000) -> Verdict:
    """The candidate's average drop over its cells (cell_id "ALL"): `pairs` holds each cell's
    (reference_scores, candidate_scores). Each cell weighs the same, whatever its n (as the studies average).

    Interval: stratified paired bootstrap percentile, two-sided (1 - 2*alpha): resample pairs within each cell,
    average the cells' mean differences. p-value: stratified sign-flip permutation test of that same weighted
    mean (each difference weighted 1/(cells * n_cell)); exact for <= 16 nonzero differences, else
    `n_resamples` random flips. A randomization test rather than a normal approximation: it is valid at any
    size, and it matches the per-cell test. Its p cannot go below 1/(n_resamples + 1). Same outcome rules per
    mode as `compare_cell`.
    """
    _check_settings(mode, alpha, n_resamples)
    if len(pairs) == 0:
        raise GateInputError(f"aggregate for candidate {candidate}: no cells given; pass (reference_scores, "
                             "candidate_scores) per cell")
    cells = [_paired(ref, cand, f"aggregate for candidate {candidate}, cell #{i}")
             for i, (ref, cand) in enumerate(pairs)]
    k = len(cells)
    rng = np.random.default_rng(seed)
    z = float(stats.norm.ppf(1 - alpha))
    diffs = [cand - ref for ref, cand in cells]
    delta = 100 * float(np.mean([d.mean() for d in diffs]))
    weighted = np.concatenate([d / (k * d.size) for d in diffs])
    p, p_method, p_floor = _sign_flip_p(weighted, rng, n_resamples)
    p_method = "stratified " + p_method
    n_total = int(sum(d.size for d in diffs))

    if np.any(weighted != 0):
        means = np.zeros(n_resamples)
        for d in diffs:
            means += _bootstrap_means(d, rng, n_resamples)
        low, high = np.quantile(means / k, [alpha, 1 - alpha])
        ci_method = f"stratified paired bootstrap percentile ({n_resamples} resamples)"
    else:
        low, high = -_zero_discordance_bound(n_total, z), _zero_discordance_bound(n_total, z)
        ci_method = "zero-discordance score bound"
    ci_low, ci_high = min(100 * float(low), delta), max(100 * float(high), delta)

    # Null variance of the weighted mean: sum over cells of (1/k^2) * disagreement / n, disagreement >= 1/n.
    null_variance = sum(max(float(np.mean(d ** 2)), 1 / d.size) / d.size for d in diffs) / k ** 2
    mdd = _mdd_points(null_variance, n_total, alpha, 0.8)
    notes, stale = _warnings(n_total, mdd, tolerance, delta, "the average")
    outcome, reason = _outcome(mode, delta, ci_low, p, tolerance, alpha, 1 - 2 * alpha, adjusted=False)
    return Verdict(candidate=candidate, cell_id="ALL", outcome=outcome, n=n_total,
                   reference_mean=100 * float(np.mean([r.mean() for r, _ in cells])),
                   candidate_mean=100 * float(np.mean([c.mean() for _, c in cells])), delta=delta, ci_low=ci_low,
                   ci_high=ci_high, p_value=p, p_adjusted=p, tolerance=tolerance, mode=mode,
                   min_detectable_drop=mdd, warnings=notes, stale=stale, reason=reason, ci_level=1 - 2 * alpha,
                   alpha=alpha, p_method=p_method, ci_method=ci_method, p_floor=p_floor, n_cells=k)


def format_failure(v: Verdict) -> str:
    """A readable multi-line account of one verdict (written for failures; fine for passes)."""
    where = f"average over {v.n_cells} cells" if v.cell_id == "ALL" else f"cell {v.cell_id}"
    p_line = f"{v.p_value:.3g} one-sided, {v.p_method}" if v.p_method else f"{v.p_value:.3g} one-sided"
    if v.holm_family > 1:
        p_line += f"; Holm-adjusted over {v.holm_family} cells: {v.p_adjusted:.3g}"
    p_line += f" (alpha {v.alpha:g})"
    lines = [
        f"{v.outcome.upper()}: {where}, candidate {v.candidate!r}, mode {v.mode}",
        f"  reference   {v.reference_mean:6.1f} points",
        f"  candidate   {v.candidate_mean:6.1f} points   (n={v.n} paired samples)",
        f"  delta       {v.delta:+6.1f} points   {100 * v.ci_level:g}% CI [{v.ci_low:+.1f}, {v.ci_high:+.1f}]"
        + (f" ({v.ci_method})" if v.ci_method else ""),
        f"  p           {p_line}",
        f"  tolerance   {v.tolerance.points:g} points: {v.tolerance.source}",
        f"  resolution  minimal detectable drop {v.min_detectable_drop:.1f} points (80% power)",
        f"  why         {v.reason}",
    ]
    lines += [f"  warning     {w}" for w in v.warnings]
    return "\n".join(lines)
