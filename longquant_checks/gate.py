"""The gate's statistics: paired per-cell comparisons of a candidate against the reference, Holm over cells,
the per-candidate average, the per-language and per-bucket averages, tolerances and their sources. Pure
functions: no pytest, no engines, no files.

Scores are per-sample floats in [0, 1]; accuracies, deltas, tolerances and intervals are in points (0-100).
delta = candidate - reference (negative = worse); drop = -delta.

Modes (what "fail" means for a cell whose tolerance is T points):
- ``point``:   the observed drop exceeds T. Ignores noise: at n=50 one sample is 2 points.
- ``default``: the observed drop exceeds T *and* the candidate is significantly worse (one-sided p < alpha,
               Holm-adjusted over the candidate's cells by `decide`). Fails only on evidence.
- ``strict``:  non-inferiority: passes only if the one-sided (1 - alpha) upper bound of the drop is below T,
               i.e. the lower end of the two-sided (1 - 2*alpha) interval of delta, the interval every Verdict
               reports (90% at alpha = 0.05). Passes only on evidence; small n fails.

Levels (`Verdict.level`, ids in `Verdict.cell_id`), one candidate:
- ``cell``:      one (task, bucket, language) cell; id ``<task>-<bucket label>-<language>`` (schema.Cell.id).
- ``language``:  the stratified average over one language's cells; id ``lang:<code>`` ("lang:de").
- ``bucket``:    the stratified average over one length bucket's cells; id ``bucket:<label>`` ("bucket:4K").
- ``aggregate``: the stratified average over all the candidate's cells; id ``ALL``.
A level is a Holm family: all planned cells of a candidate form one, all its planned languages another, all its
planned buckets a third, the aggregate a family of one. A level whose plan has a single group (one language, one
bucket) is not built: its one average is the aggregate, and gating it twice would spend alpha twice on one test.

Multiplicity over a whole run (`gate_candidate`): each level's family is tested by Holm at a share of alpha
(`DEFAULT_ALPHA_SHARES`, renormalised over the levels the plan has), i.e. weighted Bonferroni across levels and
Holm within each. The shares sum to 1, so the chance that *any* verdict of *any* level of a candidate with no
real difference fails is <= alpha, whatever the dependence between levels (they share samples) and whatever the
tolerances. `p_adjusted` is the Holm-adjusted p divided by its level's share, so "fail iff p_adjusted < alpha"
holds at every level. Holm families are the *planned* cells / languages / buckets, not those that ran: see
`decide` for what deselection does to a verdict.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

from .schema import PRECISIONS
from .errors import LongquantError, UnknownValueError
from .schema import bucket_label, parse_bucket

MODES = ("default", "strict", "point")
LEVELS = ("cell", "language", "bucket", "aggregate")
CORRECTIONS = ("holm", "bonferroni")
__all__ = [
    "CORRECTIONS", "DEFAULT_AGGREGATE_TOLERANCE", "DEFAULT_ALPHA_SHARES", "DEFAULT_BUCKET_TOLERANCE",
    "DEFAULT_CELL_TOLERANCE", "DEFAULT_LANGUAGE_TOLERANCE", "GateInputError", "LEVELS", "MODES", "PRECISIONS",
    "PairedCell", "Tolerance", "ToleranceRule", "Verdict", "aggregate", "aggregate_tolerance", "alpha_shares",
    "compare_cell", "decide", "default_level_tolerances", "format_failure", "gate_candidate", "holm",
    "level_gates", "level_id", "level_tolerance", "min_detectable_drop", "min_samples_to_resolve",
    "resolve_tolerance",
]

# Allowed drop in points, per precision class. Evidence: on long-context tasks FP8/INT8 lose ~0.2-0.8 points
# on average, int4 (GPTQ/AWQ) ~1.8-2.7, nf4 ~6.9; Neural Magic reports >= 99% recovery for 8-bit. Single cells
# swing far more than averages (the source study's FP8 cells swing -12/+10 points at n=50), so a cell gets
# several times the average's allowance: it should catch a broken cell, not sampling noise. 16-bit is the
# reference's own class (bf16 vs fp16, another engine): it should differ only by kernel nondeterminism.
DEFAULT_CELL_TOLERANCE: dict[str, float] = {"16-bit": 2.0, "8-bit": 5.0, "4-bit": 10.0}
# The per-candidate average: a bit above the studies' averages (8-bit 0.8, int4 2.7), below nf4's 6.9 for 4-bit.
DEFAULT_AGGREGATE_TOLERANCE: dict[str, float] = {"16-bit": 1.0, "8-bit": 2.0, "4-bit": 5.0}
# A language's / a bucket's average: midway between the cell's and the whole average's allowance. Two reasons
# point the same way: (1) noise: a group pools several cells (tasks x buckets for a language, tasks x languages
# for a bucket), so its average swings less than a cell and more than the average over all cells; (2) the real
# loss: the studies find it concentrated exactly along these axes (it grows with length and is worse outside
# English), so an honest quantization's worst language or longest bucket legitimately loses more than its
# average (int4 ~2.7 overall, several points in the long buckets and the weakest languages). What these gates
# are for, a collapsed language or length (tens of points, hidden in the average: a 40-point drop in one of 26
# languages is 1.5 points overall), sits far above either allowance. Two tables, equal for now, so a config can
# tune them apart.
DEFAULT_LANGUAGE_TOLERANCE: dict[str, float] = {"16-bit": 1.5, "8-bit": 3.5, "4-bit": 7.5}
DEFAULT_BUCKET_TOLERANCE: dict[str, float] = {"16-bit": 1.5, "8-bit": 3.5, "4-bit": 7.5}
# Each level's share of a run's alpha (renormalised over the levels a plan has; see the module docstring). The
# aggregate gets the largest single share: it is the only gate for small drops spread over every cell, and its
# power is the most sensitive to its threshold. Cells, languages and buckets mostly catch large, local drops,
# for which a smaller alpha costs little: their thresholds are already alpha * share / (family size), and
# z moves slowly out there (cells of a 36-cell plan: z 2.99 at share 1, 3.26 at share 0.4).
DEFAULT_ALPHA_SHARES: dict[str, float] = {"cell": 0.4, "language": 0.15, "bucket": 0.15, "aggregate": 0.3}

_EPS = 1e-9            # points: float noise allowed when comparing a drop with a tolerance
_EXACT_MAX_FLIPS = 16  # sign-flip tests enumerate all 2**k sign patterns up to this many nonzero differences
_CHUNK = 2_000_000     # elements per resampling block: bounds memory for big n
_POWER = 0.8           # the power every minimal detectable drop is quoted at
_MAX_RESOLVING_N = 100_000  # "n >= N would resolve it" is said up to this N; beyond: "no practical n"
_LEVEL_PREFIX = {"language": "lang", "bucket": "bucket"}
_UNITS = {"cell": "cells", "language": "languages", "bucket": "buckets", "aggregate": "averages"}


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


_LEVEL_DEFAULTS = {"cell": DEFAULT_CELL_TOLERANCE, "language": DEFAULT_LANGUAGE_TOLERANCE,
                   "bucket": DEFAULT_BUCKET_TOLERANCE, "aggregate": DEFAULT_AGGREGATE_TOLERANCE}


def level_tolerance(level: str, precision: str, defaults: Mapping[str, float] | None = None) -> Tolerance:
    """The default tolerance of one level ("cell", "language", "bucket", "aggregate") for a precision class;
    `defaults` (precision -> points) replaces that level's table. A language / bucket tolerance applies to
    each language's / bucket's average."""
    if level not in LEVELS:
        raise UnknownValueError("level", level, LEVELS)
    if level == "aggregate":
        return aggregate_tolerance(precision, defaults)
    points = _check_precision(precision, _LEVEL_DEFAULTS[level] if defaults is None else defaults)
    if level == "cell":
        return Tolerance(points, f"default for {precision} ({points:g} points)")
    return Tolerance(points, f"default {level} average for {precision} ({points:g} points)")


def default_level_tolerances(precision: str) -> dict[str, Tolerance]:
    """Every level's default tolerance for a precision class: the `tolerances_by_level` of `gate_candidate`."""
    return {level: level_tolerance(level, precision) for level in LEVELS}


# ----------------------------------------------------------------------------------------------- verdicts

@dataclass
class Verdict:
    """One paired comparison (a cell, or one of the averages: see `level`). Means, delta, interval and
    tolerance in points.

    `ci_low`/`ci_high` is the two-sided (1 - 2*alpha) interval of delta (`ci_level`, 0.90 at alpha 0.05), so its
    lower end is the one-sided (1 - alpha) bound strict mode uses. `p_value` is one-sided ("candidate worse",
    H0: no difference); `p_adjusted` is Holm's over the *planned* family given to `decide` (`holm_family`
    members, `unrun` of which did not run and count as p = 1), divided by the level's `alpha_share`
    (== p_value before `decide`). `min_detectable_drop` is the drop (points) found with 80% power at the
    strictest threshold this verdict faces: alpha before `decide`, alpha * alpha_share / holm_family after it
    (default mode). `null_variance` is the variance under H0 of the (weighted) mean difference, in fractions^2:
    what the minimal detectable drop is computed from.

    `level` is "cell", "language", "bucket" or "aggregate"; `group` the language code or bucket label of a
    language / bucket verdict ("" otherwise). Ids: see the module docstring.
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
    holm_family: int = 1  # the planned size of the family Holm ran over (run + unrun members)
    level: str = "cell"
    group: str = ""
    unrun: int = 0  # members of the planned family that did not run (counted as p = 1)
    alpha_share: float = 1.0  # this level's share of alpha; p_adjusted is divided by it
    null_variance: float | None = None
    correction: str = "holm"  # how `decide` adjusted p over the family: "holm" or "bonferroni"
    # What is compared: "accuracy" (scores, in points) or a divergence signal ("kl", "nll", "top1":
    # divergence_gate.py), whose "drop" is the mean divergence and `unit` its own; level "trend" is a slope.
    signal: str = "accuracy"
    unit: str = "points"

    @property
    def drop(self) -> float:
        return -self.delta

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def planned(self) -> int:
        """The planned size of this verdict's Holm family (alias of `holm_family`)."""
        return self.holm_family

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class PairedCell:
    """One cell's paired per-sample scores (same samples, same order) for `level_gates` / `gate_candidate`.

    `bucket` takes tokens or a label ("4K"). `tolerance` is the cell's own (e.g. from `resolve_tolerance`);
    None: the "cell" entry of `tolerances_by_level`. Plain 5-tuples (task, bucket, language, reference_scores,
    candidate_scores) are accepted wherever a PairedCell is.
    """

    task: str
    bucket: int
    language: str
    reference_scores: Any
    candidate_scores: Any
    tolerance: Tolerance | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bucket", parse_bucket(self.bucket))

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.task, self.bucket, self.language)

    @property
    def id(self) -> str:
        return f"{self.task}-{bucket_label(self.bucket)}-{self.language}"


def level_id(level: str, group: str = "") -> str:
    """A level verdict's cell_id: "lang:de", "bucket:4K", "ALL" (aggregate). Cells use schema.Cell.id."""
    if level == "aggregate":
        return "ALL"
    if level not in _LEVEL_PREFIX:
        raise UnknownValueError("level", level, ("language", "bucket", "aggregate"))
    return f"{_LEVEL_PREFIX[level]}:{group}"


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
    if 0 <= array.min() and array.max() <= 1:  # NaN fails both comparisons; inf fails one
        return array
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
    k = losses + wins
    if k == 0:
        return 1.0
    if k <= 1000:  # exact in integers: P(X >= losses), X ~ Bin(k, 1/2) (binomtest's value, without its overhead)
        return min(1.0, sum(math.comb(k, i) for i in range(losses, k + 1)) / 2 ** k)
    return float(stats.binom.sf(losses - 1, k, 0.5))


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


def _stratified_sign_flip_p(weighted: np.ndarray, rng: np.random.Generator,
                            n_resamples: int) -> tuple[float, str, float]:
    """The sign-flip test of `_sign_flip_p`, computed through the sizes of the differences.

    Under random signs, the D_s nonzero differences of one size s contribute s * (2 W_s - D_s) with
    W_s ~ Bin(D_s, 1/2), independently across sizes: the same null distribution, in far fewer terms. 0/1 scores
    give one size per distinct cell n (1 / (cells * n)), so a stratified average over cells of equal n is the
    exact binomial test of its pooled discordant pairs, with no Monte Carlo floor. The exact distribution is
    summed while the grid over all sizes but the last stays small; otherwise W_s is drawn `n_resamples` times
    (Monte Carlo, as `_sign_flip_p`). Few nonzero differences, or many distinct sizes (partial credit):
    `_sign_flip_p` itself.
    """
    nonzero = weighted[weighted != 0]
    k = nonzero.size
    if k <= _EXACT_MAX_FLIPS:
        return _sign_flip_p(weighted, rng, n_resamples)
    sizes, counts = np.unique(np.abs(nonzero), return_counts=True)
    if sizes.size * 8 > k:
        return _sign_flip_p(weighted, rng, n_resamples)
    observed = float(nonzero.sum())
    slack = 1e-9 * float(np.abs(nonzero).sum())  # ties in float sums must count as ties
    head, last, d_last = sizes[:-1], float(sizes[-1]), int(counts[-1])
    grid = int(np.prod(counts[:-1] + 1)) if head.size else 1
    if grid <= 2_000_000:
        partial = np.zeros(1)
        mass = np.ones(1)
        for s, d in zip(head, counts[:-1]):
            w = np.arange(d + 1)
            partial = (partial[:, None] + s * (2 * w - d)[None, :]).ravel()
            mass = (mass[:, None] * stats.binom.pmf(w, d, 0.5)[None, :]).ravel()
        # P(last * (2 W - d) <= observed + slack - partial) for W ~ Bin(d, 1/2)
        top = np.floor(((observed + slack - partial) / last + d_last) / 2)
        p = float(np.sum(mass * stats.binom.cdf(top, d_last, 0.5)))
        return min(1.0, p), "sign-flip permutation (exact, binomial by difference size)", 0.5 ** k
    at_most = 0
    rows = max(1, _CHUNK // sizes.size)
    for start in range(0, n_resamples, rows):
        draws = rng.binomial(counts, 0.5, size=(min(rows, n_resamples - start), sizes.size))
        at_most += int(np.count_nonzero((2 * draws - counts) @ sizes <= observed + slack))
    floor = 1 / (n_resamples + 1)
    return ((1 + at_most) * floor, f"sign-flip permutation (Monte Carlo by difference size, {n_resamples} resamples)",
            max(floor, 0.5 ** k))


def _stratified_bootstrap_means(diffs: np.ndarray, rng: np.random.Generator, n_resamples: int) -> np.ndarray:
    """`_bootstrap_means` through the distinct values: resampling n pairs is a multinomial draw over the
    distinct differences (three for 0/1 scores), drawn as successive conditional binomials: the same
    distribution in far fewer draws."""
    n = diffs.size
    values, counts = np.unique(diffs, return_counts=True)
    if values.size * 4 > n:
        return _bootstrap_means(diffs, rng, n_resamples)
    remaining = np.full(n_resamples, n, dtype=np.int64)
    total = np.zeros(n_resamples)
    left = n
    for value, count in zip(values[:-1], counts[:-1]):
        drawn = rng.binomial(remaining, min(1.0, count / left))
        total += value * drawn
        remaining -= drawn
        left -= int(count)
    total += values[-1] * remaining
    return total / n


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


@functools.lru_cache(maxsize=1024)
def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha))


@functools.lru_cache(maxsize=1024)
def _z_sum(alpha: float, power: float) -> float:
    return float(stats.norm.ppf(1 - alpha) + stats.norm.ppf(power))


def _mdd_points(null_variance: float, n: int, alpha: float, power: float) -> float:
    """MDD (points) from the null variance of the mean difference (fractions), floored by the exact test."""
    exact_floor = math.ceil(math.log2(1 / alpha)) / n
    return float(min(100.0, 100 * max(_z_sum(alpha, power) * math.sqrt(null_variance), exact_floor)))


def _scaled_null_variance(discordance: float, per_cell: int, cells: int) -> float:
    """Null variance of an equal-weight average over `cells` cells of `per_cell` pairs each, disagreement floored
    at 1/n per cell as `compare_cell` / `aggregate` do."""
    return max(discordance, 1 / per_cell) / (cells * per_cell)


def min_samples_to_resolve(tolerance_points: float, discordance: float, alpha: float = 0.05,
                           power: float = _POWER, cells: int = 1, cap: int = _MAX_RESOLVING_N) -> int | None:
    """The smallest n (pairs per cell, over `cells` equally weighted cells) whose minimal detectable drop at
    `alpha` (the threshold the test actually faces, e.g. alpha / m under Holm) is <= `tolerance_points`, with
    the same disagreement assumption (`discordance`, E[d^2] per sample) and the same exact-test floor as
    `min_detectable_drop`. None when no n <= `cap` does (a 0-point tolerance never resolves)."""
    if not 0 <= discordance <= 1:
        raise GateInputError(f"discordance={discordance!r} must be in [0, 1] (a share of samples)")
    if not 0 < alpha < 0.5:
        raise GateInputError(f"alpha={alpha!r} must be in (0, 0.5)")
    if not (isinstance(cells, (int, np.integer)) and cells >= 1):
        raise GateInputError(f"cells={cells!r} must be a positive integer")

    def resolves(n: int) -> bool:
        mdd = _mdd_points(_scaled_null_variance(discordance, n, cells), cells * n, alpha, power)
        return mdd <= tolerance_points + _EPS

    if not resolves(cap):
        return None
    t, z = tolerance_points / 100, _z_sum(alpha, power)
    if t >= 1:
        return 1
    # MDD(n) <= t iff c/(k n) <= t, z^2 d/(k n) <= t^2 and z^2/(k n^2) <= t^2 (the 1/n disagreement floor).
    guess = max(math.ceil(math.log2(1 / alpha)) / (cells * t), z * z * discordance / (cells * t * t),
                z / (t * math.sqrt(cells)), 1.0)
    n = min(cap, max(1, math.ceil(guess)))
    while n < cap and not resolves(n):  # float edges: the MDD only shrinks with n
        n += 1
    while n > 1 and resolves(n - 1):
        n -= 1
    return n


# -------------------------------------------------------------------------------------------- outcomes

def _outcome(mode: str, delta: float, ci_low: float, p: float, tolerance: Tolerance, alpha: float,
             ci_level: float, adjusted: bool | str, unit: str = "points", what: str = "drop") -> tuple[str, str]:
    drop, tol = -delta, tolerance.points
    over = drop > tol + _EPS
    f = (lambda x: f"{x:.1f}") if unit == "points" else (lambda x: f"{x:.3g}")
    amount = f"{what} {f(drop)} {unit}"
    if mode == "point":
        if over:
            return "fail", f"observed {amount} exceeds the tolerance {tol:g} (point mode ignores noise)"
        return "pass", f"observed {what} {f(max(drop, 0))} {unit} is within the tolerance {tol:g} (point mode)"
    if mode == "strict":
        bound = -ci_low
        level = f"one-sided {100 * (1 - alpha):g}%"
        if bound < tol - _EPS:
            return "pass", (f"non-inferior: the {level} upper bound of the {what}, {f(bound)} {unit}, "
                            f"is below the tolerance {tol:g}")
        return "fail", (f"cannot rule out a {what} of {f(bound)} {unit} ({level} upper bound; "
                        f"{100 * ci_level:g}% interval's end) >= the tolerance {tol:g}")
    which = adjusted if isinstance(adjusted, str) else ("Holm-adjusted p" if adjusted else "p")
    if not over:
        return "pass", f"observed {what} {f(max(drop, 0))} {unit} is within the tolerance {tol:g}"
    if p < alpha:
        return "fail", (f"observed {amount} exceeds the tolerance {tol:g} and is significant "
                        f"({which} = {p:.3g} < {alpha:g})")
    return "pass", (f"observed {amount} exceeds the tolerance {tol:g} but is not significant "
                    f"({which} = {p:.3g} >= {alpha:g}); more samples would tell")


_RESOLUTION_MARK = "cannot resolve a"  # in the resolution warning; `decide` replaces it with the honest one


def _resolution_note(n: int, n_cells: int, null_variance: float, tolerance: Tolerance, threshold: float,
                     where: str) -> tuple[float, str | None]:
    """The minimal detectable drop at `threshold` and, when it exceeds the tolerance, the warning saying so
    and which n would resolve it (same disagreement rate: E[d^2] = null_variance * n)."""
    mdd = _mdd_points(null_variance, n, threshold, _POWER)
    if mdd <= tolerance.points + _EPS:
        return mdd, None
    discordance = min(1.0, null_variance * n)
    needed = min_samples_to_resolve(tolerance.points, discordance, threshold, _POWER, cells=n_cells)
    per = "" if n_cells == 1 else f" per cell (over {n_cells} cells)"
    if needed is None:
        fix = f"no practical n would resolve it (none up to {_MAX_RESOLVING_N}{per})"
    else:
        fix = f"n >= {needed}{per} would resolve it at the same disagreement rate"
    return mdd, (f"n={n} {_RESOLUTION_MARK} {tolerance.points:g}-point tolerance (minimal detectable drop "
                 f"{mdd:.1f} points at 80% power, {where}); {fix}")


def _stale(delta: float, ci_low: float, ci_level: float, tolerance: Tolerance, what: str) -> tuple[str | None, bool]:
    """A stale baseline is flagged only on evidence: the whole interval of delta lies above +tolerance, i.e.
    the candidate is better by more than the tolerance at one-sided level alpha (ci_low is the one-sided
    (1 - alpha) lower bound). A noise win (+6 points at n=50, interval about [-4, +16]) is not flagged."""
    if ci_low > tolerance.points + _EPS:
        return (f"the candidate beats the reference by {delta:.1f} points in {what}, significantly more than the "
                f"tolerance {tolerance.points:g} (the {100 * ci_level:g}% interval's lower end, {ci_low:+.1f}, is "
                "above it): the reference baseline may be stale; re-run it"), True
    return None, False


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

    The minimal detectable drop here is at alpha, a family of one; `decide` recomputes it at the threshold the
    cell faces in its Holm family. `stale`: the whole interval of delta is above +tolerance (see `_stale`).
    """
    _check_settings(mode, alpha, n_resamples)
    ref, cand = _paired(reference_scores, candidate_scores, f"cell {cell_id} (candidate {candidate})")
    n = ref.size
    diffs = cand - ref
    rng = np.random.default_rng(seed)
    z = _z(alpha)
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

    null_variance = max(float(np.mean(diffs ** 2)), 1 / n) / n
    return _verdict(candidate, cell_id, "cell", "", n, 1, 100 * float(ref.mean()), 100 * float(cand.mean()),
                    delta, ci_low, ci_high, p, p_method, p_floor, ci_method, null_variance, tolerance, mode, alpha,
                    f"cell {cell_id}")


def _verdict(candidate: str, cell_id: str, level: str, group: str, n: int, n_cells: int, reference_mean: float,
             candidate_mean: float, delta: float, ci_low: float, ci_high: float, p: float, p_method: str,
             p_floor: float, ci_method: str, null_variance: float, tolerance: Tolerance, mode: str, alpha: float,
             what: str) -> Verdict:
    """A verdict before multiplicity: outcome at alpha, minimal detectable drop at alpha (a family of one)."""
    mdd, note = _resolution_note(n, n_cells, null_variance, tolerance, alpha, f"one-sided alpha {alpha:g}")
    stale_note, stale = _stale(delta, ci_low, 1 - 2 * alpha, tolerance, what)
    notes = [w for w in (note, stale_note) if w]
    outcome, reason = _outcome(mode, delta, ci_low, p, tolerance, alpha, 1 - 2 * alpha, adjusted=False)
    return Verdict(candidate=candidate, cell_id=cell_id, outcome=outcome, n=n, reference_mean=reference_mean,
                   candidate_mean=candidate_mean, delta=delta, ci_low=ci_low, ci_high=ci_high, p_value=p,
                   p_adjusted=p, tolerance=tolerance, mode=mode, min_detectable_drop=mdd, warnings=notes, stale=stale,
                   reason=reason, ci_level=1 - 2 * alpha, alpha=alpha, p_method=p_method, ci_method=ci_method,
                   p_floor=p_floor, n_cells=n_cells, level=level, group=group, null_variance=null_variance)


def holm(p_values: Sequence[float], family_size: int | None = None) -> list[float]:
    """Holm's step-down adjusted p-values (same order): controls the family-wise error rate at any dependence.

    `family_size` (default: len(p_values)) is the planned family; its members not given count as p = 1.
    Holm's adjusted p of the i-th smallest is max_{j <= i} min(1, (m - j + 1) p_(j)). Replacing another
    member's p (rank r) by 1 can only raise (or keep) every other member's adjusted p: members ranked before r
    are untouched (their max does not reach r); each member ranked after r moves one rank earlier, so its
    multiplier (m - j + 1) grows by one, and the term the max loses, (m - r + 1) p_(r), is dominated by the
    new term of the member now at rank r, (m - r + 1) p_(r+1). So with unrun members at p = 1 an adjusted p is
    >= the one the whole plan would give, and equal when all ran.
    """
    p = np.asarray(p_values, dtype=float)
    k = p.size
    m = k if family_size is None else family_size
    if not (isinstance(m, (int, np.integer)) and m >= k):
        raise GateInputError(f"family_size={family_size!r} must be an integer >= the {k} p-values given "
                             "(the planned family includes every p-value given)")
    full = np.concatenate([p, np.ones(m - k)])
    order = np.argsort(full, kind="stable")  # the given come first among ties at 1: same result either way
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * full[index]))  # monotone: never below a smaller p's
        adjusted[index] = running
    return adjusted[:k].tolist()


_FAMILY_MARKS = ("; counted as p=1", "may not clear ")  # notes `decide` writes: replaced when it runs again


def decide(verdicts: Sequence[Verdict], alpha: float = 0.05, family_size: int | None = None,
           alpha_share: float = 1.0, correction: str = "holm") -> list[Verdict]:
    """Multiplicity over one family (one candidate's cells; or its languages; or its buckets): fills
    p_adjusted, holm_family, unrun, alpha_share; "default" verdicts take their outcome from it (fail iff
    drop > tolerance and p_adjusted < alpha) and their minimal detectable drop and resolution warning from the
    threshold they face. point/strict outcomes stand (strict needs no correction: every cell must show
    non-inferiority on its own). Returns new Verdicts in the same order.

    The family is the *planned* one: `family_size` members (default: the verdicts given), of which those not
    given (deselected with -k / --lf, errored, skipped) count as p = 1. With correction="holm" (the default):
    p_adjusted = Holm's adjusted p over the planned family / alpha_share. What deselection does, precisely:
      * when every planned member ran, this is Holm over the plan;
      * otherwise each given verdict's p_adjusted is >= the one it would get had the whole plan run (see
        `holm`), so deselection is conservative: a fail in a partial run is a fail with the whole plan, and a
        pass with the whole plan stays a pass (same scores); but a cell that fails with the whole plan may pass
        when members with smaller p-values did not run (its rank moves earlier, so its Holm multiplier grows).
        Each such verdict says "k of m planned ... were not run; counted as p=1".
    Holm cannot be fully selection-invariant: its step-down makes a member's threshold depend on the others'
    p-values. correction="bonferroni" (p_adjusted = min(1, m * p) / alpha_share) is: a verdict then depends
    on its own p-value and the planned size only, whatever ran. It is never more powerful than Holm; both fail
    the smallest p at the same threshold, alpha * alpha_share / m, so they differ only in the second and later
    failures of a family.

    Power (default mode): the strictest threshold a member can face is alpha * alpha_share / m (Holm's for
    the smallest p; Bonferroni's for all). The minimal detectable drop is recomputed there, a conservative
    bound for members that Holm tests later at larger thresholds, and the resolution warning says which n
    would resolve the tolerance at that threshold, with the same disagreement rate. point/strict verdicts keep
    compare_cell's (at alpha: neither is corrected).
    """
    if not 0 < alpha < 0.5:
        raise GateInputError(f"alpha={alpha!r} must be in (0, 0.5), e.g. 0.05")
    if not (isinstance(alpha_share, (int, float)) and 0 < alpha_share <= 1):
        raise GateInputError(f"alpha_share={alpha_share!r} must be in (0, 1]: this family's share of alpha")
    if correction not in CORRECTIONS:
        raise UnknownValueError("correction", correction, CORRECTIONS)
    k = len(verdicts)
    m = k if family_size is None else family_size
    if not (isinstance(m, (int, np.integer)) and m >= k):
        raise GateInputError(f"family_size={family_size!r} must be an integer >= the {k} verdicts given: the "
                             "planned family counts every verdict that ran plus those that did not")
    if k == 0:
        return []
    p_values = [v.p_value for v in verdicts]
    adjusted = holm(p_values, m) if correction == "holm" else [min(1.0, m * p) for p in p_values]
    unrun = m - k
    threshold = alpha * alpha_share / m
    name = "Holm" if correction == "holm" else "Bonferroni"
    decided = []
    for v, adj in zip(verdicts, adjusted):
        p_adj = min(1.0, adj / alpha_share)
        unit = _UNITS.get(v.level, "members")
        notes = [w for w in v.warnings if not any(mark in w for mark in _FAMILY_MARKS)]
        outcome, reason, mdd = v.outcome, v.reason, v.min_detectable_drop
        if v.mode == "default":
            which = f"{name}-adjusted p" if m > 1 else ("adjusted p" if alpha_share < 1 else "p")
            outcome, reason = _outcome(v.mode, v.delta, v.ci_low, p_adj, v.tolerance, alpha, v.ci_level, which,
                                       v.unit, "slope" if v.level == "trend" else "drop")
            if v.null_variance is not None:
                where = (f"threshold alpha/{m} = {threshold:.2g}, {name}'s strictest over {m} planned {unit}"
                         if m > 1 else f"one-sided alpha {threshold:.2g}")
                if alpha_share < 1:
                    where += f", this level's share {alpha_share:g} of alpha {alpha:g}"
                mdd, note = _resolution_note(v.n, v.n_cells, v.null_variance, v.tolerance, threshold, where)
                notes = [w for w in notes if _RESOLUTION_MARK not in w] + ([note] if note else [])
            # The strictest threshold is alpha*share/m; a test that cannot go that low cannot fail this member.
            if v.drop > v.tolerance.points + _EPS and v.p_floor >= threshold and (m > 1 or alpha_share < 1):
                fix = "raise n_resamples" if "Monte Carlo" in v.p_method else "raise samples"
                notes.append(f"the smallest p-value this test can give here ({v.p_floor:.2g}) may not clear "
                             f"{name}'s threshold over {m} {unit} (down to {threshold:.2g}); {fix}")
        if unrun:
            notes.append(f"{unrun} of {m} planned {unit} were not run; counted as p=1 (conservative: the adjusted "
                         "p can only be higher than with the whole plan, so a fail here is a fail with the whole "
                         "plan, but a pass may not be)")
        decided.append(replace(v, p_adjusted=p_adj, outcome=outcome, reason=reason, warnings=notes, holm_family=m,
                               unrun=unrun, alpha_share=float(alpha_share), min_detectable_drop=mdd,
                               correction=correction))
    return decided


def _stratified(candidate: str, cell_id: str, level: str, group: str, what: str, where: str,
                pairs: Sequence[tuple[Any, Any]], tolerance: Tolerance, mode: str, alpha: float, seed: int,
                n_resamples: int) -> Verdict:
    """The equal-weight average over cells, paired and stratified (see `aggregate`)."""
    _check_settings(mode, alpha, n_resamples)
    if len(pairs) == 0:
        raise GateInputError(f"{where}: no cells given; pass (reference_scores, candidate_scores) per cell")
    cells = [_paired(ref, cand, f"{where}, cell #{i}") for i, (ref, cand) in enumerate(pairs)]
    k = len(cells)
    rng = np.random.default_rng(seed)
    z = _z(alpha)
    diffs = [cand - ref for ref, cand in cells]
    delta = 100 * float(np.mean([d.mean() for d in diffs]))
    weighted = np.concatenate([d / (k * d.size) for d in diffs])
    p, p_method, p_floor = _stratified_sign_flip_p(weighted, rng, n_resamples)
    p_method = "stratified " + p_method
    n_total = int(sum(d.size for d in diffs))

    if np.any(weighted != 0):
        means = np.zeros(n_resamples)
        for d in diffs:
            means += _stratified_bootstrap_means(d, rng, n_resamples)
        low, high = np.quantile(means / k, [alpha, 1 - alpha])
        ci_method = f"stratified paired bootstrap percentile ({n_resamples} resamples)"
    else:
        low, high = -_zero_discordance_bound(n_total, z), _zero_discordance_bound(n_total, z)
        ci_method = "zero-discordance score bound"
    ci_low, ci_high = min(100 * float(low), delta), max(100 * float(high), delta)

    # Null variance of the weighted mean: sum over cells of (1/k^2) * disagreement / n, disagreement >= 1/n.
    null_variance = sum(max(float(np.mean(d ** 2)), 1 / d.size) / d.size for d in diffs) / k ** 2
    return _verdict(candidate, cell_id, level, group, n_total, k, 100 * float(np.mean([r.mean() for r, _ in cells])),
                    100 * float(np.mean([c.mean() for _, c in cells])), delta, ci_low, ci_high, p, p_method, p_floor,
                    ci_method, null_variance, tolerance, mode, alpha, what)


def aggregate(candidate: str, pairs: Sequence[tuple[Sequence[float], Sequence[float]]], tolerance: Tolerance,
              mode: str = "default", alpha: float = 0.05, seed: int = 0, n_resamples: int = 2000) -> Verdict:
    """The candidate's average drop over its cells (cell_id "ALL", level "aggregate"): `pairs` holds each cell's
    (reference_scores, candidate_scores). Each cell weighs the same, whatever its n (as the studies average).

    Interval: stratified paired bootstrap percentile, two-sided (1 - 2*alpha): resample pairs within each cell,
    average the cells' mean differences. p-value: stratified sign-flip permutation test of that same weighted
    mean (each difference weighted 1/(cells * n_cell)); exact for <= 16 nonzero differences; exact too when
    the differences take few distinct sizes (0/1 scores: one size per distinct cell n; over cells of equal n it
    is the binomial test of the pooled discordant pairs), else `n_resamples` random flips, whose p cannot go
    below 1/(n_resamples + 1). A randomization test rather than a normal approximation: it is valid at any
    size, and it matches the per-cell test. The bootstrap draws through the distinct differences (the same
    resampling distribution, fewer draws). Same outcome rules per mode as `compare_cell`; at a share of a run's
    alpha, pass it through `decide([v], alpha, alpha_share=...)`.
    """
    return _stratified(candidate, "ALL", "aggregate", "", "the average", f"aggregate for candidate {candidate}",
                       pairs, tolerance, mode, alpha, seed, n_resamples)


# ------------------------------------------------------------------------------------------- levels

def _as_paired(cells: Iterable[Any], candidate: str) -> list[PairedCell]:
    """PairedCells with validated float arrays (checked once here, cheaply again downstream)."""
    out = []
    for i, c in enumerate(cells):
        if isinstance(c, (tuple, list)) and len(c) in (5, 6):
            c = PairedCell(*c)
        elif not isinstance(c, PairedCell):
            raise GateInputError(f"cell #{i}: expected a PairedCell or a (task, bucket, language, reference_scores, "
                                 f"candidate_scores) tuple, got {type(c).__name__}")
        ref, cand = _paired(c.reference_scores, c.candidate_scores, f"cell {c.id} (candidate {candidate})")
        out.append(replace(c, reference_scores=ref, candidate_scores=cand))
    seen: set[tuple[str, int, str]] = set()
    for c in out:
        if c.key in seen:
            raise GateInputError(f"cell {c.id} is given twice; each (task, bucket, language) cell once")
        seen.add(c.key)
    return out


def _plan_keys(planned: Iterable[Any] | None, cells: Sequence[PairedCell]) -> list[tuple[str, int, str]]:
    """The planned cells as (task, bucket tokens, language), in plan order; default: the cells given."""
    if planned is None:
        return [c.key for c in cells]
    keys = []
    for i, p in enumerate(planned):
        p = getattr(p, "cell", p)  # plan.PlannedCell -> schema.Cell
        if all(hasattr(p, a) for a in ("task", "bucket", "language")):
            key = (p.task, parse_bucket(p.bucket), p.language)
        elif isinstance(p, (tuple, list)) and len(p) >= 3:
            key = (p[0], parse_bucket(p[1]), p[2])
        else:
            raise GateInputError(f"planned #{i}: expected a cell (task, bucket, language), got {p!r}")
        keys.append(key)
    keys = list(dict.fromkeys(keys))
    missing = [c.id for c in cells if c.key not in set(keys)]
    if missing:
        raise GateInputError(f"cells {', '.join(missing)} were run but are not in the plan; the plan (Holm's "
                             "family) must include every cell that ran")
    return keys


def _group(key: tuple[str, int, str], level: str) -> str:
    return key[2] if level == "language" else bucket_label(key[1])


def _level_groups(keys: Sequence[tuple[str, int, str]], level: str) -> list[str]:
    if level == "bucket":
        return [bucket_label(b) for b in sorted({k[1] for k in keys})]
    return list(dict.fromkeys(_group(k, level) for k in keys))


def _levels_of(keys: Sequence[tuple[str, int, str]]) -> list[str]:
    """The levels a plan has: a level with a single group would repeat the aggregate, so it is not built."""
    if not keys:
        return []
    return [lv for lv in LEVELS if lv in ("cell", "aggregate") or len(_level_groups(keys, lv)) > 1]


def alpha_shares(planned: Iterable[Any], weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each level's share of alpha for a plan: `weights` (default `DEFAULT_ALPHA_SHARES`) over the levels the
    plan has (no language level with one language, no bucket level with one bucket), renormalised to sum 1.
    Depends on the plan only, so which cells ran does not move it."""
    keys = _plan_keys(planned, [])
    weights = DEFAULT_ALPHA_SHARES if weights is None else weights
    present = _levels_of(keys)
    for lv in present:
        w = weights.get(lv)
        if not (isinstance(w, (int, float)) and w > 0):
            raise GateInputError(f"alpha share of level {lv!r} is {w!r}; every level the plan has "
                                 f"({', '.join(present)}) needs a share > 0")
    total = float(sum(weights[lv] for lv in present))
    return {lv: weights[lv] / total for lv in present}


def _tolerance_for(tolerances_by_level: Mapping[str, Tolerance] | str, level: str) -> Tolerance:
    if isinstance(tolerances_by_level, str):
        return level_tolerance(level, tolerances_by_level)
    tol = tolerances_by_level.get(level)
    if not isinstance(tol, Tolerance):
        raise GateInputError(f"tolerances_by_level has no Tolerance for level {level!r} (got {tol!r}); give one "
                             "per level, e.g. default_level_tolerances(precision), or a precision class")
    return tol


def _sub_seed(seed: int, *parts: str) -> int:
    """A seed for one verdict that depends on its identity only, not on which other verdicts ran."""
    tag = zlib.crc32(":".join(parts).encode())
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, tag]).generate_state(1)[0])


def level_gates(candidate: str, cells: Sequence[Any], tolerances_by_level: Mapping[str, Tolerance] | str,
                mode: str = "default", alpha: float = 0.05, seed: int = 0, planned: Iterable[Any] | None = None,
                n_resamples: int = 2000, shares: Mapping[str, float] | None = None,
                correction: str = "holm") -> list[Verdict]:
    """The candidate's per-language and per-bucket gates: each language's (bucket's) stratified paired average
    over its cells that ran, as `aggregate` computes it, with the level's tolerance
    (`tolerances_by_level["language"]` / `["bucket"]`, or a precision class for the defaults), then `decide`
    over the level's family: all *planned* languages (buckets) of the candidate, those with no cell run
    counting as p = 1, at the level's share of alpha (`shares`, default `alpha_shares(planned)`).

    `cells`: the cells that ran, PairedCell or (task, bucket, language, reference_scores, candidate_scores).
    `planned`: the plan (cells as (task, bucket, language), schema.Cell or plan.PlannedCell); default `cells`.
    Returns language verdicts in plan order (cell_id "lang:<code>"), then bucket verdicts by length
    ("bucket:<label>"); none for a level whose plan has one group (it would repeat the aggregate), none for a
    group none of whose cells ran. A group some of whose planned cells did not run averages those that did
    and says so. Each group's resampling seed derives from `seed` and the group alone.
    """
    paired = _as_paired(cells, candidate)
    keys = _plan_keys(planned, paired)
    shares = alpha_shares(keys) if shares is None else shares
    out: list[Verdict] = []
    for level in ("language", "bucket"):
        groups = _level_groups(keys, level)
        if len(groups) <= 1:
            continue
        if level not in shares:
            raise GateInputError(f"shares has no alpha share for level {level!r}: {dict(shares)!r}")
        tol = _tolerance_for(tolerances_by_level, level)
        verdicts = []
        for g in groups:
            members = [c for c in paired if _group(c.key, level) == g]
            n_planned = sum(_group(k, level) == g for k in keys)
            if not members:
                continue
            v = _stratified(candidate, level_id(level, g), level, g, f"{level} {g}",
                            f"{level} {g} for candidate {candidate}",
                            [(c.reference_scores, c.candidate_scores) for c in members], tol, mode, alpha,
                            _sub_seed(seed, level, g), n_resamples)
            if len(members) < n_planned:
                v.warnings.append(f"{n_planned - len(members)} of {n_planned} planned cells of {level} {g} did "
                                  f"not run: this average covers the {len(members)} that did")
            verdicts.append(v)
        out += decide(verdicts, alpha, family_size=len(groups), alpha_share=shares[level], correction=correction)
    return out


def gate_candidate(candidate: str, cells: Sequence[Any], tolerances_by_level: Mapping[str, Tolerance] | str,
                   mode: str = "default", alpha: float = 0.05, seed: int = 0, planned: Iterable[Any] | None = None,
                   n_resamples: int = 2000, shares: Mapping[str, float] | None = None,
                   correction: str = "holm") -> list[Verdict]:
    """Every gate of one candidate: its cells, its languages and buckets (`level_gates`), its aggregate, each
    level a family over the plan at its share of alpha (`alpha_shares`), so that with no real difference the
    chance that any of them fails is <= alpha. Returns cells (in the order given), languages, buckets, then
    the aggregate ("ALL", over the cells that ran).

    A cell's tolerance is its PairedCell.tolerance, else `tolerances_by_level["cell"]`. Equivalent by hand:
    compare_cell per cell -> decide(cells, alpha, family_size=len(plan), alpha_share=shares["cell"]);
    level_gates(...); aggregate(...) -> decide([agg], alpha, alpha_share=shares["aggregate"]).
    """
    paired = _as_paired(cells, candidate)
    keys = _plan_keys(planned, paired)
    if not paired:
        return []
    shares = alpha_shares(keys) if shares is None else shares
    for lv in ("cell", "aggregate"):
        if lv not in shares:
            raise GateInputError(f"shares has no alpha share for level {lv!r}: {dict(shares)!r}")
    verdicts = [compare_cell(candidate, c.id, c.reference_scores, c.candidate_scores,
                             c.tolerance if c.tolerance is not None else _tolerance_for(tolerances_by_level, "cell"),
                             mode, alpha, _sub_seed(seed, "cell", c.id), n_resamples) for c in paired]
    out = decide(verdicts, alpha, family_size=len(keys), alpha_share=shares["cell"], correction=correction)
    out += level_gates(candidate, paired, tolerances_by_level, mode, alpha, seed, keys, n_resamples, shares,
                       correction)
    agg = aggregate(candidate, [(c.reference_scores, c.candidate_scores) for c in paired],
                    _tolerance_for(tolerances_by_level, "aggregate"), mode, alpha, seed, n_resamples)
    if len(paired) < len(keys):
        agg.warnings.append(f"{len(keys) - len(paired)} of {len(keys)} planned cells did not run: this average "
                            f"covers the {len(paired)} that did")
    return out + decide([agg], alpha, alpha_share=shares["aggregate"], correction=correction)


def format_failure(v: Verdict) -> str:
    """A readable multi-line account of one verdict (written for failures; fine for passes)."""
    if v.signal != "accuracy":
        return _format_signal_failure(v)
    if v.level in ("language", "bucket"):
        where = f"{v.level} {v.group}: average over {v.n_cells} cells"
    elif v.cell_id == "ALL" or v.level == "aggregate":
        where = f"average over {v.n_cells} cells"
    else:
        where = f"cell {v.cell_id}"
    p_line = _p_line(v)
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


def _p_line(v: Verdict) -> str:
    p_line = f"{v.p_value:.3g} one-sided, {v.p_method}" if v.p_method else f"{v.p_value:.3g} one-sided"
    if v.holm_family > 1 or v.alpha_share < 1:
        unit = _UNITS.get(v.level, "members")
        name = "Bonferroni" if v.correction == "bonferroni" else "Holm"
        p_line += f"; {name}-adjusted over {v.holm_family} {unit}" if v.holm_family > 1 else "; adjusted"
        if v.unrun:
            p_line += f" ({v.unrun} not run, counted as p=1)"
        if v.alpha_share < 1:
            p_line += f", divided by this level's alpha share {v.alpha_share:.3g}"
        p_line += f": {v.p_adjusted:.3g}"
    p_line += f" (alpha {v.alpha:g})"
    return p_line


def _format_signal_failure(v: Verdict) -> str:
    """A divergence verdict or a length trend (divergence_gate.py), in its own units."""
    if v.level == "trend":
        where = f"length trend of {v.group} over {v.n_cells} cells"
        what = "slope"
    elif v.level in ("language", "bucket"):
        where, what = f"{v.level} {v.group}: average {v.signal} over {v.n_cells} cells", "mean"
    elif v.level == "aggregate":
        where, what = f"average {v.signal} over {v.n_cells} cells", "mean"
    else:
        where, what = f"cell {v.cell_id}, {v.signal}", "mean"
    lines = [
        f"{v.outcome.upper()}: {where}, candidate {v.candidate!r}, mode {v.mode}",
        f"  {what:<11} {v.candidate_mean:.4g} {v.unit}   (n={v.n} samples)   {100 * v.ci_level:g}% CI "
        f"[{-v.ci_high:.4g}, {-v.ci_low:.4g}]" + (f" ({v.ci_method})" if v.ci_method else ""),
        f"  p           {_p_line(v)}",
        f"  tolerance   {v.tolerance.points:g} {v.unit}: {v.tolerance.source}",
        f"  resolution  an excess of {v.min_detectable_drop:.3g} over the tolerance is found with 80% power",
        f"  why         {v.reason}",
    ]
    lines += [f"  warning     {w}" for w in v.warnings]
    return "\n".join(lines)
