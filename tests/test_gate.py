"""The gate's statistics on synthetic per-sample scores with a known truth: false alarms, power, modes, Holm,
the exact tests, intervals, tolerances, and input errors."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from longquant_checks.errors import LongquantError, UnknownValueError
from longquant_checks.gate import (
    DEFAULT_AGGREGATE_TOLERANCE, DEFAULT_CELL_TOLERANCE, MODES, PRECISIONS, GateInputError, Tolerance, ToleranceRule,
    aggregate, aggregate_tolerance, compare_cell, decide, format_failure, holm, min_detectable_drop, resolve_tolerance,
)
from longquant_checks.gate import _tango_interval

ZERO = Tolerance(0.0, "zero (test)")


def paired_binary(rng, n, accuracy, redraw, drop=0.0):
    """0/1 scores of a reference and a candidate with no real difference unless `drop` (a fraction) is planted.

    The candidate copies the reference except on a random `redraw` share of samples, where it answers anew at
    the same accuracy: the pair is exchangeable (H0 holds exactly) and disagrees on redraw*2p(1-p) of samples.
    A planted drop then turns each right candidate answer wrong with probability drop/accuracy, so the
    candidate loses `drop` of accuracy in expectation, paired.
    """
    ref = rng.random(n) < accuracy
    cand = ref.copy()
    redo = rng.random(n) < redraw
    cand[redo] = rng.random(int(redo.sum())) < accuracy
    if drop:
        cand &= ~(rng.random(n) < drop / accuracy)
    return ref.astype(float), cand.astype(float)


def monte_carlo_ceiling(runs: int, rate: float = 0.05) -> float:
    """The share of runs a test with a true false-alarm rate of exactly `rate` exceeds only 1% of the time
    (binomial 99th percentile): the Monte Carlo margin over `rate` for a fixed number of runs."""
    return stats.binom.ppf(0.99, runs, rate) / runs


# ------------------------------------------------------------------------------------- A/A and power

def test_aa_runs_with_any_failing_cell_stay_below_alpha_after_holm():
    """200 runs x 30 cells, n=50, 0/1 scores, accuracy in [0.3, 0.95], candidate exchangeable with the
    reference (disagreeing on 10-100% re-drawn answers). Default mode with a 0-point tolerance, the harshest
    (any positive tolerance fails a subset of these cells). Family-wise false alarms must stay <= 5%, plus the
    binomial 99th-percentile margin for 200 runs (9%)."""
    rng = np.random.default_rng(20240611)
    runs, cells, failing_runs, failing_cells = 200, 30, 0, 0
    for _ in range(runs):
        verdicts = [compare_cell("aa", f"cell{c}", *paired_binary(rng, 50, rng.uniform(0.3, 0.95),
                                                                  rng.uniform(0.1, 1.0)), ZERO)
                    for c in range(cells)]
        failing_cells += sum(not v.passed for v in verdicts)
        failing_runs += any(not v.passed for v in decide(verdicts))
    assert failing_runs / runs <= monte_carlo_ceiling(runs)
    # Before Holm each cell is a level-alpha test on its own.
    assert failing_cells / (runs * cells) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / (runs * cells))


def test_aggregate_aa_false_alarm_rate():
    """The average over 20 cells (n=50) with no real difference fails in <= 5% of 100 runs (+ the margin)."""
    rng = np.random.default_rng(7)
    runs, failing = 100, 0
    for run in range(runs):
        pairs = [paired_binary(rng, 50, rng.uniform(0.3, 0.95), rng.uniform(0.1, 1.0)) for _ in range(20)]
        failing += not aggregate("aa", pairs, ZERO, n_resamples=500, seed=run).passed
    assert failing / runs <= monte_carlo_ceiling(runs)


def test_aggregate_detects_a_planted_five_point_drop():
    """Power: the candidate loses 5 points in every cell (paired, in expectation) on top of exchangeable noise
    (10-70% of answers re-drawn: per-cell deltas swing about +-11 points at n=50, like the source study's FP8
    cells). A plan of 20 cells at n=50 per cell (the default samples per cell); aggregate tolerance passed
    explicitly: 1 point. Default mode must fail the average in >= 80% of 100 runs."""
    rng = np.random.default_rng(99)
    runs, detected = 100, 0
    for run in range(runs):
        pairs = [paired_binary(rng, 50, rng.uniform(0.3, 0.95), rng.uniform(0.1, 0.7), drop=0.05)
                 for _ in range(20)]
        detected += not aggregate("w4", pairs, Tolerance(1.0, "test"), n_resamples=500, seed=run).passed
    assert detected / runs >= 0.80


def test_continuous_scores_aa_cell_rate_uses_the_permutation_test():
    """Partial-credit scores with no real difference: cells with p < alpha stay at alpha (+ 3 SE)."""
    rng = np.random.default_rng(3)
    cells, significant = 300, 0
    for c in range(cells):
        base = rng.uniform(0, 1, 30)
        ref = np.clip(base + rng.normal(0, 0.2, 30), 0, 1)
        cand = np.clip(base + rng.normal(0, 0.2, 30), 0, 1)
        v = compare_cell("aa", f"c{c}", ref, cand, ZERO, n_resamples=200, seed=c)
        assert v.p_method.startswith("sign-flip permutation")
        significant += v.p_value < 0.05
    assert significant / cells <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / cells)


# ------------------------------------------------------------------------------------------- modes

def all_modes(ref, cand, tolerance, **kw):
    return {mode: compare_cell("cand", "vt-2K-en", ref, cand, tolerance, mode=mode, **kw) for mode in MODES}


def test_small_n_large_drop_fails_point_and_strict_but_not_default():
    ref, cand = [1.0] * 10, [1.0] * 7 + [0.0] * 3  # a 30-point drop from 3 samples: p = 0.5**3
    v = all_modes(ref, cand, Tolerance(10.0, "4-bit"))
    assert v["point"].outcome == "fail"
    assert v["default"].outcome == "pass" and v["default"].p_value == pytest.approx(0.125)
    assert "not significant" in v["default"].reason
    assert v["strict"].outcome == "fail" and -v["strict"].ci_low >= 10
    assert all(x.delta == pytest.approx(-30.0) for x in v.values())


def test_large_n_tiny_drop_within_tolerance_passes_every_mode():
    rng = np.random.default_rng(0)
    ref = (rng.random(4000) < 0.7).astype(float)
    cand = ref.copy()
    cand[np.flatnonzero(ref == 1)[:40]] = 0  # exactly 1 point lost
    v = all_modes(ref, cand, Tolerance(5.0, "8-bit"))
    assert {x.outcome for x in v.values()} == {"pass"}
    assert v["default"].delta == pytest.approx(-1.0)
    assert v["default"].p_value < 1e-6  # significant, yet within tolerance
    assert -v["strict"].ci_low < 5


def test_drop_just_above_tolerance_at_huge_n_fails_every_mode():
    n = 20000
    ref = np.zeros(n)
    cand = np.zeros(n)
    ref[:1500] = 1          # 1500 losses ...
    cand[1500:2500] = 1     # ... and 1000 wins: delta = -500/20000 = -2.5 points
    v = all_modes(ref, cand, Tolerance(2.0, "16-bit"))
    assert {x.outcome for x in v.values()} == {"fail"}
    assert v["default"].delta == pytest.approx(-2.5)
    assert v["default"].ci_low < -2.5 < v["default"].ci_high < -2.0


@pytest.mark.parametrize("n,tolerance", [(200, 5.0), (50, 10.0)])
def test_equal_scores_pass_every_mode_with_zero_delta(n, tolerance):
    scores = (np.arange(n) % 3 == 0).astype(float)
    for v in all_modes(scores, scores.copy(), Tolerance(tolerance, "t")).values():
        assert v.outcome == "pass" and v.delta == 0 and v.p_value == 1.0 and not v.stale
        assert v.ci_low < 0 < v.ci_high  # no disagreement seen is not proof of none


def test_strict_needs_enough_samples_even_for_identical_outputs():
    # 0 of 50 pairs differ: the one-sided 95% bound on the drop is z^2/(n+z^2) = 5.1 points > 5.
    scores = [1.0, 0.0] * 25
    v = compare_cell("c", "x", scores, scores, Tolerance(5.0, "8-bit"), mode="strict")
    assert v.outcome == "fail" and -v.ci_low == pytest.approx(100 * 1.6449**2 / (50 + 1.6449**2), abs=0.01)


def test_default_uses_p_and_tolerance_and_point_ignores_p():
    ref, cand = [1.0] * 50, [1.0] * 44 + [0.0] * 6  # 12-point drop, p = 0.5**6
    v = all_modes(ref, cand, Tolerance(5.0, "8-bit"))
    assert v["default"].outcome == "fail" and "significant" in v["default"].reason
    assert v["point"].outcome == "fail"
    assert compare_cell("c", "x", ref, cand, Tolerance(12.0, "t"), mode="point").outcome == "pass"  # not > 12


# ------------------------------------------------------------------------------------------ p-values

def test_mcnemar_all_discordant_pairs_against_the_candidate():
    ref, cand = [1.0] * 40, [1.0] * 34 + [0.0] * 6
    v = compare_cell("c", "x", ref, cand, ZERO)
    assert v.p_value == pytest.approx(0.5**6) and "McNemar" in v.p_method


def test_mcnemar_mixed_discordant_pairs():
    ref = [1, 1, 1, 1, 1, 0, 1, 0]
    cand = [0, 0, 0, 0, 0, 1, 1, 0]  # 5 losses, 1 win: P(X >= 5 | Bin(6, 1/2)) = 7/64
    assert compare_cell("c", "x", ref, cand, ZERO).p_value == pytest.approx(7 / 64)
    assert compare_cell("c", "x", cand, ref, ZERO).p_value == pytest.approx(1 - 1 / 64)  # better: p near 1


def test_partial_credit_uses_the_exact_sign_flip_test():
    ref, cand = [0.5] * 4 + [1.0], [0.0] * 4 + [1.0]  # 4 equal nonzero differences, all against
    v = compare_cell("c", "x", ref, cand, ZERO)
    assert v.p_method == "sign-flip permutation (exact)" and v.p_value == pytest.approx(1 / 16)


def test_monte_carlo_sign_flip_agrees_with_the_exact_binomial():
    # 20 equal-size differences, 13 against: the sign-flip null is Bin(20, 1/2) on the signs.
    ref = np.full(20, 0.5)
    cand = np.r_[np.zeros(13), np.ones(7)]
    v = compare_cell("c", "x", ref, cand, ZERO, n_resamples=20000, seed=1)
    assert "Monte Carlo" in v.p_method
    assert v.p_value == pytest.approx(stats.binom.sf(12, 20, 0.5), abs=0.01)
    again = compare_cell("c", "x", ref, cand, ZERO, n_resamples=20000, seed=1)
    assert (again.p_value, again.ci_low, again.ci_high) == (v.p_value, v.ci_low, v.ci_high)  # seeded


# ---------------------------------------------------------------------------------------------- Holm

def test_holm_matches_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_holm_is_monotone_and_never_below_raw(p):
    adjusted = holm(p)
    assert all(a >= raw - 1e-15 and a <= 1 for a, raw in zip(adjusted, p))
    for i in range(len(p)):
        for j in range(len(p)):
            if p[i] < p[j]:
                assert adjusted[i] <= adjusted[j]


def test_decide_applies_holm_to_default_and_leaves_point_and_strict():
    ref, cand = [1.0] * 50, [1.0] * 44 + [0.0] * 6  # p = 0.0156 alone: fails; times 10 cells: 0.156
    quiet = [1.0] * 50
    tol = Tolerance(5.0, "8-bit")
    cells = [compare_cell("c", "bad", ref, cand, tol)] + [compare_cell("c", f"ok{i}", quiet, quiet, tol)
                                                          for i in range(9)]
    assert cells[0].outcome == "fail" and cells[0].p_adjusted == cells[0].p_value
    decided = decide(cells)
    assert [v.cell_id for v in decided] == [v.cell_id for v in cells]
    assert decided[0].outcome == "pass" and decided[0].p_adjusted == pytest.approx(10 * 0.5**6)
    assert "Holm-adjusted" in decided[0].reason
    assert all(v.p_adjusted >= v.p_value for v in decided)
    assert cells[0].outcome == "fail"  # inputs are not modified
    point = [replace(v, mode="point", outcome="fail") for v in cells[:2]]
    assert [v.outcome for v in decide(point)] == ["fail", "fail"]


def test_decide_warns_when_monte_carlo_p_cannot_clear_holm():
    ref, cand = np.full(40, 0.6), np.full(40, 0.2)  # 40-point drop, partial credit
    v = compare_cell("c", "kv", ref, cand, Tolerance(5.0, "t"), n_resamples=99)
    assert v.p_value == pytest.approx(0.01) and v.outcome == "fail"
    decided = decide([v] + [replace(v, cell_id=f"c{i}", delta=0.0) for i in range(99)])
    assert decided[0].outcome == "pass"
    assert any("raise n_resamples" in w for w in decided[0].warnings)


# ------------------------------------------------------------------------------------------ intervals

def test_tango_interval_when_no_pair_differs():
    z = stats.norm.ppf(0.95)
    low, high = _tango_interval(0, 0, 10, z)
    assert low == pytest.approx(-z * z / (10 + z * z)) and high == pytest.approx(z * z / (10 + z * z))


@pytest.mark.parametrize("p_ref,p_loss,p_win", [(0.6, 0.10, 0.10), (0.9, 0.08, 0.02), (0.95, 0.02, 0.0),
                                                (0.4, 0.3, 0.2)])
def test_tango_interval_exact_coverage_near_nominal_at_n50(p_ref, p_loss, p_win):
    """Exact coverage of the 90% interval at n=50 by enumerating every (wins, losses) outcome."""
    n, z = 50, stats.norm.ppf(0.95)
    truth = p_win - p_loss
    coverage = 0.0
    for wins in range(n + 1):
        for losses in range(n + 1 - wins):
            prob = stats.multinomial.pmf([wins, losses, n - wins - losses], n, [p_win, p_loss, 1 - p_win - p_loss])
            if prob > 1e-12:
                low, high = _tango_interval(wins, losses, n, z)
                coverage += prob * (low <= truth <= high)
    assert coverage >= 0.86


def test_bootstrap_interval_is_seeded_and_covers_delta():
    rng = np.random.default_rng(5)
    ref, cand = rng.random(60), rng.random(60)
    a = compare_cell("c", "x", ref, cand, ZERO, seed=3)
    b = compare_cell("c", "x", ref, cand, ZERO, seed=3)
    c = compare_cell("c", "x", ref, cand, ZERO, seed=4)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.delta < a.ci_high and "bootstrap" in a.ci_method and a.ci_level == pytest.approx(0.9)


scores01 = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=80)


@given(scores01, st.randoms(use_true_random=False))
def test_binary_verdict_is_invariant_to_sample_order_and_covers_delta(pairs, random):
    ref, cand = [float(r) for r, _ in pairs], [float(c) for _, c in pairs]
    order = list(range(len(pairs)))
    random.shuffle(order)
    v = compare_cell("c", "x", ref, cand, Tolerance(5.0, "t"))
    w = compare_cell("c", "x", [ref[i] for i in order], [cand[i] for i in order], Tolerance(5.0, "t"))
    assert (v.p_value, v.outcome, v.ci_low, v.ci_high) == pytest.approx((w.p_value, w.outcome, w.ci_low, w.ci_high))
    assert v.ci_low <= v.delta <= v.ci_high and 0 <= v.p_value <= 1


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40))
def test_partial_credit_interval_covers_delta(pairs):
    v = compare_cell("c", "x", [r for r, _ in pairs], [c for _, c in pairs], ZERO, n_resamples=200)
    assert v.ci_low <= v.delta <= v.ci_high and 0 < v.p_value <= 1


# ------------------------------------------------------------------------------------------ aggregate

def test_aggregate_weighs_cells_equally_whatever_their_n():
    small = ([1.0] * 10, [0.0] * 5 + [1.0] * 5)     # -50 points on 10 samples
    large = ([1.0] * 1000, [1.0] * 1000)            # 0 points on 1000 samples
    v = aggregate("c", [small, large], Tolerance(5.0, "t"), n_resamples=300)
    assert v.cell_id == "ALL" and v.n == 1010 and v.n_cells == 2
    assert v.delta == pytest.approx(-25.0) and v.reference_mean == pytest.approx(100.0)
    assert v.ci_low <= v.delta <= v.ci_high
    assert v.p_method == "stratified sign-flip permutation (exact)" and v.p_value == pytest.approx(0.5**5)


def test_aggregate_of_identical_cells_passes():
    cells = [([1.0, 0.0] * 25, [1.0, 0.0] * 25)] * 20
    for mode in MODES:
        v = aggregate("c", cells, aggregate_tolerance("8-bit"), mode=mode)
        assert v.passed and v.delta == 0 and v.p_value == 1.0


# ------------------------------------------------------------------------------------------ tolerances

def test_default_tolerances_cover_every_precision():
    assert set(DEFAULT_CELL_TOLERANCE) == set(DEFAULT_AGGREGATE_TOLERANCE) == set(PRECISIONS)
    t = resolve_tolerance("4-bit", "vt", 2048, "en", 60.0)
    assert t == Tolerance(10.0, "default for 4-bit (10 points)")
    assert aggregate_tolerance("8-bit").points == 2.0


def test_most_specific_rule_wins_and_ties_go_to_the_later_rule():
    rules = [
        ToleranceRule(points=7.0, precision="4-bit"),
        ToleranceRule(points=20.0, task="cwe", bucket="4K"),
        ToleranceRule(points=3.0, task="cwe"),
        ToleranceRule(points=4.0, language="de"),  # same specificity as task=cwe, later: wins on ties
    ]
    assert resolve_tolerance("4-bit", "cwe", 4096, "en", 60.0, rules).points == 20.0
    assert resolve_tolerance("4-bit", "cwe", 8192, "en", 60.0, rules).points == 3.0
    assert resolve_tolerance("4-bit", "cwe", 8192, "de", 60.0, rules).points == 4.0
    assert resolve_tolerance("4-bit", "vt", 8192, "fr", 60.0, rules).points == 7.0
    assert resolve_tolerance("8-bit", "vt", 8192, "fr", 60.0, rules).points == 5.0  # no rule: default
    assert "task=cwe bucket=4K" in resolve_tolerance("4-bit", "cwe", 4096, "en", 60.0, rules).source


def test_relative_rule_resolves_against_the_reference_mean():
    rules = [ToleranceRule(relative=10, task="cwe")]
    t = resolve_tolerance("8-bit", "cwe", 4096, "en", 62.0, rules)
    assert t.points == pytest.approx(6.2) and "relative 10% of 62.0" in t.source
    assert resolve_tolerance("8-bit", "cwe", 4096, "en", 62.0, rules, defaults={"8-bit": 1.0}).points == \
        pytest.approx(6.2)
    assert resolve_tolerance("8-bit", "vt", 4096, "en", 62.0, rules, defaults={"8-bit": 1.0}).points == 1.0


def test_tolerance_errors_name_the_bad_value():
    with pytest.raises(UnknownValueError, match="precision '3-bit'.*16-bit, 8-bit, 4-bit"):
        resolve_tolerance("3-bit", "vt", 4096, "en", 50.0)
    with pytest.raises(GateInputError, match="exactly one of `points`.*points=1.0, relative=5"):
        ToleranceRule(points=1.0, relative=5, task="vt")
    with pytest.raises(GateInputError, match="exactly one of `points`"):
        ToleranceRule(task="vt")
    with pytest.raises(GateInputError, match="points=-1"):
        ToleranceRule(points=-1)
    with pytest.raises(UnknownValueError, match="bucket"):
        ToleranceRule(points=1, bucket=5000)
    assert issubclass(GateInputError, LongquantError)


# ------------------------------------------------------------------------------- resolution and staleness

def test_min_detectable_drop_shrinks_with_n():
    mdd = [min_detectable_drop(n, 60.0) for n in (10, 50, 200, 1000, 10000)]
    assert all(a > b for a, b in zip(mdd, mdd[1:]))
    assert mdd[1] == pytest.approx(100 * (1.6449 + 0.8416) * math.sqrt(0.48 / 50), rel=1e-3)
    assert min_detectable_drop(50, 100.0) == pytest.approx(10.0)  # exact floor: 5 discordant pairs of 50
    assert min_detectable_drop(1000, 60.0, discordance=0.05) < min_detectable_drop(1000, 60.0)


def test_warning_when_n_cannot_resolve_the_tolerance():
    ref, cand = [1.0, 0.0] * 5, [1.0, 0.0] * 5
    v = compare_cell("c", "x", ref, cand, Tolerance(3.0, "t"))
    assert v.min_detectable_drop > 3 and any("n=10 cannot resolve a 3-point tolerance" in w for w in v.warnings)
    big = [1.0, 0.0] * 5000
    assert not compare_cell("c", "x", big, big, Tolerance(3.0, "t")).warnings


def test_stale_flag_when_the_candidate_beats_the_reference_beyond_tolerance():
    ref, cand = [0.0] * 20 + [1.0] * 30, [1.0] * 50  # +40 points
    v = compare_cell("c", "x", ref, cand, Tolerance(10.0, "t"))
    assert v.stale and v.passed and any("stale" in w for w in v.warnings)
    assert v.ci_low > 10  # the rule: the whole interval of delta lies above +tolerance
    assert not compare_cell("c", "x", ref, ref, Tolerance(10.0, "t")).stale


def test_a_noise_win_is_not_a_stale_baseline():
    """+6 points at n=50 (8 wins, 5 losses) against a 5-point tolerance: the 90% interval is about [-4, +16], so
    the win is noise and the baseline is not called stale; +40 points at n=50 (interval above +28) is.
    Fails on the current gate: it flagged stale whenever delta > tolerance (3 of 5 FP8 cells on an H200)."""
    ref = [1.0] * 5 + [0.0] * 8 + [1.0] * 20 + [0.0] * 17
    cand = [0.0] * 5 + [1.0] * 8 + [1.0] * 20 + [0.0] * 17
    tol = Tolerance(5.0, "8-bit")
    v = compare_cell("fp8", "vt-4K-en", ref, cand, tol)
    assert v.delta == pytest.approx(6.0) and v.ci_low < 0 < v.ci_high
    assert not v.stale and not any("stale" in w for w in v.warnings)
    win = compare_cell("fp8", "vt-4K-en", [0.0] * 20 + [1.0] * 30, [1.0] * 50, tol)
    assert win.delta == pytest.approx(40.0) and win.stale and any("stale" in w for w in win.warnings)


def test_aa_noise_rarely_reads_as_a_stale_baseline():
    """300 cells (n=50) with no real difference and a 5-point tolerance: at most 1% are flagged stale (the old
    rule, delta > tolerance, flagged about one in six). Fails on the current gate."""
    rng = np.random.default_rng(17)
    stale = sum(compare_cell("aa", f"c{c}", *paired_binary(rng, 50, rng.uniform(0.3, 0.95), rng.uniform(0.1, 1.0)),
                             Tolerance(5.0, "8-bit")).stale for c in range(300))
    assert stale / 300 <= 0.01


def test_decide_recomputes_the_minimal_detectable_drop_at_holms_threshold():
    """Power that reflects the family: in a 36-cell plan the strictest Holm threshold is alpha/36, and the
    minimal detectable drop after `decide` is computed there (same disagreement: 6 discordant pairs of 50),
    not at alpha as one cell alone. The warning names the n that would resolve the tolerance at that
    threshold: the smallest n whose MDD is <= 5 points. Fails on the current gate: decide kept the MDD at alpha."""
    ref, cand = [1.0] * 50, [1.0] * 44 + [0.0] * 6
    tol = Tolerance(5.0, "8-bit")
    cells = [compare_cell("w8", "bad", ref, cand, tol)] + [compare_cell("w8", f"ok{i}", ref, ref, tol)
                                                           for i in range(35)]
    alone = cells[0].min_detectable_drop
    assert alone == pytest.approx(min_detectable_drop(50, 100.0, alpha=0.05, discordance=0.12))
    v = decide(cells)[0]
    honest = min_detectable_drop(50, 100.0, alpha=0.05 / 36, discordance=0.12)
    assert v.min_detectable_drop == pytest.approx(honest) and honest > alone
    note = next(w for w in v.warnings if "n=50 cannot resolve a 5-point tolerance" in w)
    assert "alpha/36" in note
    needed = int(re.search(r"n >= (\d+) would resolve it", note).group(1))
    assert min_detectable_drop(needed, 100.0, alpha=0.05 / 36, discordance=0.12) <= 5.0
    assert min_detectable_drop(needed - 1, 100.0, alpha=0.05 / 36, discordance=0.12) > 5.0
    assert decide(cells[:1])[0].min_detectable_drop == pytest.approx(alone)  # a family of one: unchanged
    tiny = decide([compare_cell("w8", "x", ref, cand, Tolerance(0.01, "t"))] + cells[1:])[0]
    assert any("no practical n would resolve it" in w for w in tiny.warnings)


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("ref,cand,message", [
    ([1, 0, 1], [1, 0], "candidate_scores has 2 scores but reference_scores has 3"),
    ([], [], "reference_scores is empty"),
    ([1, 0], [1, float("nan")], r"candidate_scores\[1\] is nan"),
    ([1, 1.5], [1, 0], r"reference_scores\[1\] = 1.5 is outside \[0, 1\]"),
    ([1, 0], [-0.1, 0], r"candidate_scores\[0\] = -0.1 is outside"),
    ([[1, 0]], [[1, 0]], "flat sequence"),
])
def test_bad_scores_are_named(ref, cand, message):
    with pytest.raises(GateInputError, match=message) as info:
        compare_cell("w4", "vt-2K-en", ref, cand, ZERO)
    assert "cell vt-2K-en" in str(info.value)


def test_bad_settings_are_named():
    with pytest.raises(UnknownValueError, match="mode 'lenient'.*default, strict, point"):
        compare_cell("c", "x", [1], [1], ZERO, mode="lenient")
    with pytest.raises(GateInputError, match="alpha=0.7"):
        compare_cell("c", "x", [1], [1], ZERO, alpha=0.7)
    with pytest.raises(GateInputError, match="no cells given"):
        aggregate("c", [], ZERO)
    with pytest.raises(GateInputError, match="cell #1"):
        aggregate("c", [([1], [1]), ([1, 0], [1])], ZERO)


# ------------------------------------------------------------------------------------------ report

def test_format_failure_tells_the_whole_story():
    ref, cand = [1.0] * 50, [1.0] * 44 + [0.0] * 6
    tol = resolve_tolerance("8-bit", "vt", 2048, "en", 100.0)
    v = decide([compare_cell("w8", "vt-2K-en", ref, cand, tol),
                compare_cell("w8", "vt-4K-en", ref, ref, tol)])[0]
    text = format_failure(v)
    for piece in ("FAIL", "cell vt-2K-en", "'w8'", "100.0", "88.0", "-12.0", "90% CI", "McNemar",
                  "Holm-adjusted over 2 cells: 0.0312", "default for 8-bit (5 points)", "n=50", "mode default",
                  "warning", "minimal detectable drop"):
        assert piece in text, piece
