"""The gate along the studies' axes (issue 10): per-language and per-bucket gates, Holm over the *planned*
family (selection), the alpha shares that keep a whole run's false alarms at alpha, and the exact stratified
test behind the averages. Synthetic per-sample scores with a known truth, seeded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from longquant_checks.errors import UnknownValueError
from longquant_checks.gate import (
    DEFAULT_AGGREGATE_TOLERANCE, DEFAULT_ALPHA_SHARES, DEFAULT_BUCKET_TOLERANCE, DEFAULT_CELL_TOLERANCE,
    DEFAULT_LANGUAGE_TOLERANCE, LEVELS, PRECISIONS, GateInputError, PairedCell, Tolerance, aggregate, alpha_shares,
    compare_cell, decide, default_level_tolerances, format_failure, gate_candidate, holm, level_gates, level_id,
    level_tolerance,
)
from longquant_checks.gate import _mcnemar_p, _sign_flip_p, _stratified_sign_flip_p
from longquant_checks.schema import Cell, parse_bucket
from test_gate import monte_carlo_ceiling, paired_binary  # tests/ is on sys.path (pytest's prepend mode)

ZERO = Tolerance(0.0, "zero (test)")
LANGS4 = ("en", "de", "fr", "ja")
BUCKETS3 = ("2K", "4K", "8K")


def same_model(rng, n, agree):
    """0/1 scores of a reference and a candidate that are the same model: per-sample probabilities q_i (mean
    0.6), the reference draws Bernoulli(q_i); the candidate copies it with probability `agree`, else draws
    Bernoulli(q_i) anew. The pair is exchangeable (H0 holds exactly), correlated through q_i and `agree`."""
    q = rng.beta(1.2, 0.8, n)
    ref = rng.random(n) < q
    cand = np.where(rng.random(n) < agree, ref, rng.random(n) < q)
    return ref.astype(float), cand.astype(float)


# Exchangeable noise plus an optional planted paired drop, and the Monte Carlo margin: shared with test_gate.py.
planted = paired_binary


def plan(tasks, buckets, languages):
    return [(t, b, lang) for t in tasks for b in buckets for lang in languages]


def quiet_cells(keys, n=50):
    """Cells where the candidate equals the reference (p = 1 everywhere)."""
    scores = ([1.0, 0.0] * n)[:n]
    return [PairedCell(t, b, lang, scores, scores) for t, b, lang in keys]


# ------------------------------------------------------------------------------- whole-run false alarms

def test_aa_whole_run_false_alarms_count_every_level():
    """150 runs of one candidate that is the reference's own model: 3 tasks x 3 buckets x 4 languages, n=50,
    0/1 scores (agreement 0-90% per task). A run is a false alarm if ANY verdict of ANY level fails (36 cells,
    4 languages, 3 buckets, the aggregate), default mode, default 8-bit tolerances. Must stay <= 5% (+ the
    binomial margin for 150 runs). The same runs are also judged with a 0-point tolerance at every level
    (fail iff the drop is positive and p_adjusted < alpha), where only the alpha shares bound the union of
    the four families: without them (each level at the full alpha) these runs false-alarm in 13-15%.
    Fails on the current gate: no gate_candidate / per-language / per-bucket gates."""
    rng = np.random.default_rng(20250110)
    keys = plan(("vt", "cwe", "qa"), BUCKETS3, LANGS4)
    runs, alarms, alarms_at_zero = 150, 0, 0
    for run in range(runs):
        agree = {t: rng.uniform(0.0, 0.9) for t in ("vt", "cwe", "qa")}
        cells = [PairedCell(t, b, lang, *same_model(rng, 50, agree[t])) for t, b, lang in keys]
        verdicts = gate_candidate("fp8", cells, "8-bit", seed=run, n_resamples=100)
        assert {v.level for v in verdicts} == set(LEVELS) and len(verdicts) == 36 + 4 + 3 + 1
        alarms += any(not v.passed for v in verdicts)
        alarms_at_zero += any(v.delta < 0 and v.p_adjusted < v.alpha for v in verdicts)
    assert alarms / runs <= monte_carlo_ceiling(runs)
    assert alarms_at_zero / runs <= monte_carlo_ceiling(runs)


# ------------------------------------------------------------------------------- the collapsed language

def test_language_collapse_is_caught_while_the_average_passes():
    """One language of six loses 25 points (paired, in expectation) in every one of its cells; the others only
    carry exchangeable noise (10-50% of answers re-drawn: a good 4-bit quantization). 2 tasks x 2 buckets x
    6 languages at n=200, default 4-bit tolerances: the overall drop is 25/6 = 4.2 points, inside the
    aggregate's 5, so the average hides it. The language's gate must fail while the aggregate passes in >= 80%
    of 60 runs (about 95% in a longer simulation; at n=50 the aggregate's own noise, about 1.2 points, is too
    close to its 0.8-point margin for the "aggregate passes" half to hold reliably). No other language may
    fail in more than the false-alarm margin. Fails on the current gate: there is no language gate."""
    rng = np.random.default_rng(606)
    languages = ("en", "de", "fr", "ja", "zh", "sw")
    keys = plan(("vt", "qa"), ("4K", "8K"), languages)
    runs, caught, others = 60, 0, 0
    for run in range(runs):
        cells = [PairedCell(t, b, lang, *planted(rng, 200, rng.uniform(0.5, 0.95), rng.uniform(0.1, 0.5),
                                                 drop=0.25 if lang == "sw" else 0.0)) for t, b, lang in keys]
        v = {x.cell_id: x for x in gate_candidate("w4", cells, "4-bit", seed=run, n_resamples=100)}
        caught += (not v["lang:sw"].passed) and v["ALL"].passed
        others += any(not v[f"lang:{lang}"].passed for lang in languages[:-1])
    assert caught / runs >= 0.80
    assert others / runs <= monte_carlo_ceiling(runs)


def test_language_gate_reaches_holm_threshold_over_26_languages():
    """The issue's example: a 40-point drop in one of 26 languages is 1.5 points overall. With 26 languages the
    language family's threshold is 0.05 * 0.15 / 26 = 2.9e-4, below a 2000-resample Monte Carlo p's floor
    (5e-4): the stratified test over 0/1 cells of equal n is exact (binomial on the pooled discordant pairs),
    so the gate can fail. 1 task x 2 buckets x 26 languages, n=50, default 4-bit tolerances."""
    languages = [f"l{i:02d}" for i in range(26)]
    keys = plan(("vt",), ("4K", "8K"), languages)
    ref = [1.0] * 40 + [0.0] * 10
    bad = [0.0] * 20 + [1.0] * 20 + [0.0] * 10   # -40 points
    cells = [PairedCell(t, b, lang, ref, bad if lang == "l07" else ref) for t, b, lang in keys]
    v = {x.cell_id: x for x in gate_candidate("w4", cells, "4-bit")}
    lang = v["lang:l07"]
    assert lang.p_method.startswith("stratified sign-flip permutation (exact")
    assert lang.p_value == pytest.approx(0.5 ** 40) and lang.holm_family == 26
    assert lang.outcome == "fail" and v["ALL"].passed and v["ALL"].delta == pytest.approx(-40 / 26)
    assert [x.cell_id for x in v.values() if not x.passed] == ["vt-4K-l07", "vt-8K-l07", "lang:l07"]


# ------------------------------------------------------------------------------------------ structure

def test_ids_levels_order_and_groups():
    keys = plan(("vt", "qa"), ("8K", "2K"), ("en", "de", "fr"))
    verdicts = gate_candidate("c", quiet_cells(keys), "8-bit")
    ids = [v.cell_id for v in verdicts]
    assert ids == [f"{t}-{b}-{lang}" for t, b, lang in keys] + ["lang:en", "lang:de", "lang:fr",
                                                                 "bucket:2K", "bucket:8K", "ALL"]
    by_id = {v.cell_id: v for v in verdicts}
    assert by_id["lang:de"].level == "language" and by_id["lang:de"].group == "de"
    assert by_id["lang:de"].n_cells == 4 and by_id["lang:de"].n == 200 and by_id["lang:de"].holm_family == 3
    assert by_id["bucket:2K"].level == "bucket" and by_id["bucket:2K"].n_cells == 6
    assert by_id["bucket:2K"].holm_family == 2 and by_id["ALL"].level == "aggregate"
    assert by_id["vt-2K-en"].level == "cell" and by_id["vt-2K-en"].holm_family == 12
    assert by_id["lang:de"].tolerance.points == DEFAULT_LANGUAGE_TOLERANCE["8-bit"]
    assert by_id["bucket:8K"].tolerance.points == DEFAULT_BUCKET_TOLERANCE["8-bit"]
    assert by_id["ALL"].tolerance.points == DEFAULT_AGGREGATE_TOLERANCE["8-bit"]
    assert by_id["vt-8K-fr"].tolerance.points == DEFAULT_CELL_TOLERANCE["8-bit"]
    assert all(v.passed for v in verdicts)
    assert level_id("language", "de") == "lang:de" and level_id("bucket", "4K") == "bucket:4K"
    assert level_id("aggregate") == "ALL"


def test_a_level_with_one_group_is_not_built():
    """One language: its average would be the aggregate. Gating it again would spend alpha twice on one test;
    the level is skipped and the alpha shares renormalise over the levels the plan has."""
    keys = plan(("vt", "qa"), ("4K", "8K"), ("en",))
    verdicts = gate_candidate("c", quiet_cells(keys), "4-bit")
    assert {v.level for v in verdicts} == {"cell", "bucket", "aggregate"}
    shares = alpha_shares(keys)
    assert set(shares) == {"cell", "bucket", "aggregate"} and sum(shares.values()) == pytest.approx(1.0)
    total = sum(DEFAULT_ALPHA_SHARES[lv] for lv in shares)
    assert shares["cell"] == pytest.approx(DEFAULT_ALPHA_SHARES["cell"] / total)
    assert level_gates("c", quiet_cells(plan(("vt",), ("4K",), ("en", "de"))), "4-bit")[0].cell_id == "lang:en"
    assert level_gates("c", quiet_cells(plan(("vt", "qa"), ("4K",), ("en",))), "4-bit") == []
    assert sum(alpha_shares(plan("ab", ("4K", "8K"), ("en", "de"))).values()) == pytest.approx(1.0)


def test_level_p_adjusted_is_holm_over_the_planned_groups_divided_by_the_share():
    keys = plan(("vt", "qa"), ("4K",), ("en", "de", "fr"))
    cells = quiet_cells(keys)
    ref = [1.0] * 50
    drop = [1.0] * 40 + [0.0] * 10  # -20 points, 10 discordant pairs, all against
    cells[1] = PairedCell("vt", "4K", "de", ref, drop)
    cells[4] = PairedCell("qa", "4K", "de", ref, drop)
    shares = alpha_shares(keys)
    (en, de, fr) = level_gates("w8", cells, "8-bit", planned=keys)
    assert de.p_value == pytest.approx(0.5 ** 20)  # exact: the pooled 20 discordant pairs
    assert de.p_adjusted == pytest.approx(3 * 0.5 ** 20 / shares["language"])
    assert en.p_adjusted == fr.p_adjusted == 1.0 and de.alpha_share == pytest.approx(shares["language"])
    assert de.outcome == "fail" and en.passed and fr.passed
    assert de.delta == pytest.approx(-20.0) and de.tolerance.points == 3.5


def test_format_failure_of_a_language_gate():
    keys = plan(("vt", "qa"), ("4K",), ("en", "de", "fr"))
    cells = [c for c in quiet_cells(keys) if c.language != "fr"]
    cells[1] = PairedCell("vt", "4K", "de", [1.0] * 50, [1.0] * 40 + [0.0] * 10)
    cells[3] = PairedCell("qa", "4K", "de", [1.0] * 50, [1.0] * 40 + [0.0] * 10)
    de = next(v for v in level_gates("w8", cells, "8-bit", planned=keys) if v.cell_id == "lang:de")
    text = format_failure(de)
    for piece in ("FAIL", "language de: average over 2 cells", "'w8'", "-20.0", "Holm-adjusted over 3 languages",
                  "(1 not run, counted as p=1)", "divided by this level's alpha share 0.176",
                  "default language average for 8-bit (3.5 points)", "1 of 3 planned languages were not run"):
        assert piece in text, piece


# --------------------------------------------------------------------------------- selection (Holm family)

def test_deselection_can_only_raise_holm_adjusted_p():
    """For random p-value sets (with ties and p = 1) and random selections, Holm over the planned family with
    the unrun members at p = 1 gives each run member an adjusted p >= the whole plan's, equal when all ran;
    Bonferroni over the planned size is exactly selection-invariant. Through `holm` and through `decide`
    (where a fail in a partial run must be a fail with the whole plan). Fails on the current gate: holm and
    decide take no planned family size."""
    rng = np.random.default_rng(42)
    template = compare_cell("c", "x", [1.0] * 50, [1.0] * 30 + [0.0] * 20, Tolerance(5.0, "t"))
    for trial in range(1500):
        m = int(rng.integers(1, 30))
        kind = trial % 3
        p = (rng.random(m) ** 3 if kind == 0 else np.round(rng.random(m), 1) if kind == 1
             else np.minimum(1.0, rng.random(m) * 1.5))
        full = np.asarray(holm(p))
        keep = np.flatnonzero(rng.random(m) < rng.uniform(0.1, 1.0))
        partial = np.asarray(holm(p[keep], family_size=m))
        assert np.all(partial >= full[keep] - 1e-12), (p, keep)
        if keep.size == m:
            assert np.array_equal(partial, full)
        if trial % 10 == 0:
            verdicts = [replace(template, cell_id=f"c{i}", p_value=float(q), p_adjusted=float(q))
                        for i, q in enumerate(p)]
            whole = decide(verdicts, family_size=m)
            some = decide([verdicts[i] for i in keep], family_size=m)
            for i, v in zip(keep, some):
                assert v.p_adjusted >= whole[i].p_adjusted - 1e-12
                assert v.passed or not whole[i].passed
                assert v.unrun == m - keep.size and v.holm_family == m
            bonf_whole = decide(verdicts, family_size=m, correction="bonferroni")
            bonf_some = decide([verdicts[i] for i in keep], family_size=m, correction="bonferroni")
            assert [v.p_adjusted for v in bonf_some] == [bonf_whole[i].p_adjusted for i in keep]
            assert [v.outcome for v in bonf_some] == [bonf_whole[i].outcome for i in keep]


def test_a_deselected_cell_counts_as_p_one_and_says_so():
    """-k one-cell: the cell's family is still the plan's 36 cells; the 35 unrun count as p = 1, which makes
    its adjusted p 36 * p, as if Holm saw the whole plan with it smallest."""
    ref, cand = [1.0] * 50, [1.0] * 40 + [0.0] * 10  # p = 0.5**10 = 0.00098
    v = compare_cell("w8", "vt-4K-en", ref, cand, Tolerance(5.0, "8-bit"))
    alone = decide([v], family_size=36)[0]
    assert alone.p_adjusted == pytest.approx(36 * 0.5 ** 10) and alone.outcome == "fail"
    assert alone.unrun == 35 and alone.holm_family == alone.planned == 36
    assert any("35 of 36 planned cells were not run; counted as p=1 (conservative" in w for w in alone.warnings)
    assert decide([v])[0].unrun == 0 and not any("not run" in w for w in decide([v], family_size=1)[0].warnings)
    again = decide(decide([v], family_size=36), family_size=36)[0]  # idempotent: no duplicated notes
    assert again.warnings == alone.warnings and again.p_adjusted == alone.p_adjusted
    with pytest.raises(GateInputError, match="family_size=1 must be an integer >= the 2 verdicts"):
        decide([v, v], family_size=1)
    with pytest.raises(UnknownValueError, match="correction"):
        decide([v], correction="sidak")


def test_level_families_are_the_planned_groups():
    """Cells of one language (and one bucket) did not run: the language and bucket families keep their planned
    sizes, the unrun group counts as p = 1, and a group with some cells missing says what it averages."""
    keys = plan(("vt", "qa"), ("4K", "8K"), ("en", "de", "fr"))
    ran = [c for c in quiet_cells(keys) if c.language != "fr" and not (c.task == "qa" and c.bucket == 8192)]
    levels = {v.cell_id: v for v in level_gates("c", ran, "8-bit", planned=keys)}
    assert set(levels) == {"lang:en", "lang:de", "bucket:4K", "bucket:8K"}
    assert levels["lang:en"].holm_family == 3 and levels["lang:en"].unrun == 1
    assert any("1 of 3 planned languages were not run" in w for w in levels["lang:en"].warnings)
    assert levels["bucket:8K"].holm_family == 2 and levels["bucket:8K"].unrun == 0
    assert any("4 of 6 planned cells of bucket 8K did not run: this average covers the 2 that did" in w
               for w in levels["bucket:8K"].warnings)
    assert levels["bucket:8K"].n_cells == 2
    everything = gate_candidate("c", ran, "8-bit", planned=[Cell(t, parse_bucket(b), lang) for t, b, lang in keys])
    cells = [v for v in everything if v.level == "cell"]
    assert all(v.holm_family == 12 and v.unrun == 12 - len(ran) for v in cells)
    assert any(f"{12 - len(ran)} of 12 planned cells did not run" in w for w in everything[-1].warnings)
    with pytest.raises(GateInputError, match="vt-4K-en were run but are not in the plan"):
        level_gates("c", quiet_cells(keys)[:1], "8-bit", planned=keys[1:])
    with pytest.raises(GateInputError, match="given twice"):
        level_gates("c", quiet_cells(keys[:1]) * 2, "8-bit")


def test_a_group_verdict_does_not_depend_on_other_groups_running():
    """Each group's resampling seed derives from the group alone: dropping other languages changes a
    language's p_adjusted only through Holm, never its own statistics."""
    rng = np.random.default_rng(8)
    keys = plan(("vt", "qa"), ("4K", "8K"), ("en", "de", "fr"))
    cells = [PairedCell(t, b, lang, *planted(rng, 60, 0.7, 0.5)) for t, b, lang in keys]
    full = {v.cell_id: v for v in level_gates("c", cells, "8-bit", seed=3, planned=keys)}
    part = {v.cell_id: v for v in level_gates("c", [c for c in cells if c.language != "fr"], "8-bit", seed=3,
                                              planned=keys)}
    for key in ("lang:en", "lang:de"):
        assert (part[key].ci_low, part[key].ci_high, part[key].p_value) == \
            (full[key].ci_low, full[key].ci_high, full[key].p_value)
        assert part[key].p_adjusted >= full[key].p_adjusted


# ------------------------------------------------------------------------------------------ power

def test_level_resolution_warning_counts_cells_and_threshold():
    keys = plan(("vt", "qa"), ("4K",), ("en", "de", "fr", "ja"))
    cells = [PairedCell(t, b, lang, *planted(np.random.default_rng(1), 20, 0.6, 1.0)) for t, b, lang in keys]
    v = level_gates("c", cells, "16-bit", planned=keys)[0]
    threshold = 0.05 * alpha_shares(keys)["language"] / 4
    assert any("n=40 cannot resolve a 1.5-point tolerance" in w and "per cell (over 2 cells) would resolve it" in w
               and f"{threshold:.2g}" in w for w in v.warnings)


def test_planted_five_point_drop_is_still_detected_at_the_aggregates_share_of_alpha():
    """The existing power property (tests/test_gate.py: 20 cells, n=50, a 5-point drop in every cell, aggregate
    tolerance 1 point) through gate_candidate, where the aggregate is tested at its share of alpha
    (0.3 * 0.05 = 0.015 with all four levels): still >= 80% of 100 runs."""
    rng = np.random.default_rng(99)
    keys = plan(("a", "b", "c", "d", "e"), ("4K", "8K"), ("en", "de"))
    tolerances = {**default_level_tolerances("4-bit"), "aggregate": Tolerance(1.0, "test")}
    runs, detected = 100, 0
    for run in range(runs):
        cells = [PairedCell(t, b, lang, *planted(rng, 50, rng.uniform(0.3, 0.95), rng.uniform(0.1, 0.7), drop=0.05))
                 for t, b, lang in keys]
        verdicts = gate_candidate("w4", cells, tolerances, seed=run, n_resamples=100)
        assert verdicts[-1].alpha_share == pytest.approx(DEFAULT_ALPHA_SHARES["aggregate"])
        detected += not verdicts[-1].passed
    assert detected / runs >= 0.80


# ------------------------------------------------------------------------------------------ tolerances

def test_level_tolerances_sit_between_cell_and_aggregate():
    for table in (DEFAULT_LANGUAGE_TOLERANCE, DEFAULT_BUCKET_TOLERANCE):
        assert set(table) == set(PRECISIONS)
        for p in PRECISIONS:
            assert DEFAULT_AGGREGATE_TOLERANCE[p] < table[p] < DEFAULT_CELL_TOLERANCE[p]
    assert level_tolerance("language", "4-bit") == Tolerance(7.5, "default language average for 4-bit (7.5 points)")
    assert level_tolerance("bucket", "8-bit", {"8-bit": 2.5}).points == 2.5
    assert level_tolerance("cell", "4-bit").source == "default for 4-bit (10 points)"
    assert default_level_tolerances("16-bit")["aggregate"].points == DEFAULT_AGGREGATE_TOLERANCE["16-bit"]
    assert set(default_level_tolerances("8-bit")) == set(LEVELS)
    assert sum(DEFAULT_ALPHA_SHARES.values()) == pytest.approx(1.0)
    with pytest.raises(UnknownValueError, match="level 'task'"):
        level_tolerance("task", "8-bit")
    with pytest.raises(GateInputError, match="no Tolerance for level 'bucket'"):
        level_gates("c", quiet_cells(plan(("vt",), ("4K", "8K"), ("en",))), {"language": ZERO})


def test_cell_tolerance_comes_from_the_cell_then_the_level_table():
    keys = plan(("vt",), ("4K", "8K"), ("en", "de"))
    cells = quiet_cells(keys)
    cells[0] = PairedCell(*keys[0], cells[0].reference_scores, cells[0].candidate_scores, Tolerance(1.0, "rule"))
    verdicts = gate_candidate("c", cells, default_level_tolerances("4-bit"))
    assert verdicts[0].tolerance == Tolerance(1.0, "rule") and verdicts[1].tolerance.points == 10.0


# ------------------------------------------------------------------------------------ stratified test

def test_stratified_p_over_equal_n_binary_cells_is_the_pooled_mcnemar():
    rng = np.random.default_rng(12)
    for _ in range(20):
        pairs = [planted(rng, 50, rng.uniform(0.3, 0.9), rng.uniform(0.3, 1.0), drop=rng.choice([0, 0.1]))
                 for _ in range(int(rng.integers(2, 8)))]
        v = aggregate("c", pairs, ZERO)
        losses = sum(int(np.sum(c < r)) for r, c in pairs)
        wins = sum(int(np.sum(c > r)) for r, c in pairs)
        if losses + wins > 16:
            assert "exact, binomial" in v.p_method
            assert v.p_value == pytest.approx(_mcnemar_p(losses, wins), rel=1e-9)


@pytest.mark.parametrize("sizes,resamples", [((40, 50, 60), 2000), ((40, 41, 42, 43, 44, 45), 20000)])
def test_stratified_sign_flip_by_size_agrees_with_plain_sign_flips(sizes, resamples):
    """Unequal cell sizes: exact by summing over the grid of sizes (3 sizes), or Monte Carlo over binomials
    when that grid is too big (6 sizes of ~40 discordant pairs each): both match plain random sign flips."""
    rng = np.random.default_rng(len(sizes))
    diffs = [rng.choice([-1.0, 0.0, 1.0], p=[0.45, 0.15, 0.4], size=n) for n in sizes]
    weighted = np.concatenate([d / (len(sizes) * d.size) for d in diffs])
    p, method, _ = _stratified_sign_flip_p(weighted, np.random.default_rng(0), resamples)
    reference, _, _ = _sign_flip_p(weighted, np.random.default_rng(1), 100_000)
    assert ("exact" in method) == (len(sizes) == 3)
    assert p == pytest.approx(reference, abs=0.012)
