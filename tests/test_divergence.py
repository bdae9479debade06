"""The divergence signal's arithmetic (divergence.py) and its gate (divergence_gate.py), on synthetic data."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from longquant_checks import gate
from longquant_checks.divergence import (DivergenceError, TokenTrace, forced_from_logprobs, forced_from_topk, measure,
                                         partition_kl, trace_from_logprobs)
from longquant_checks.divergence_gate import compare_divergence, gate_divergence, length_trend


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _full_kl(p_log, q_log):
    return np.sum(np.exp(p_log) * (p_log - q_log), axis=-1)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), vocab=st.integers(2, 300), k=st.integers(1, 40),
       sharp=st.floats(0.1, 8.0), noise=st.floats(0.0, 3.0))
def test_topk_partition_kl_is_a_lower_bound_of_the_full_kl(seed, vocab, k, sharp, noise):
    """Coarse-graining (the reference's top-k, the rest lumped) never raises a KL: the stored side understates."""
    rng = np.random.default_rng(seed)
    p = _log_softmax(sharp * rng.normal(size=(3, vocab)))
    q = _log_softmax(np.log(np.exp(p) + 1e-12) + noise * rng.normal(size=(3, vocab)))
    top = np.argsort(-p, axis=1)[:, :min(k, vocab)]
    approx = partition_kl(np.take_along_axis(p, top, 1), np.take_along_axis(q, top, 1))
    full = _full_kl(p, q)
    assert np.all(approx <= full + 1e-6)
    if k >= vocab:
        np.testing.assert_allclose(approx, full, rtol=1e-5, atol=1e-7)


def test_identical_sides_have_zero_divergence_and_full_agreement():
    rng = np.random.default_rng(0)
    rows = _log_softmax(4 * rng.normal(size=(7, 50)))
    ids = rows.argmax(axis=1)
    trace = trace_from_logprobs(ids, rows, k=5)
    d = measure(trace, forced_from_logprobs(trace, rows))
    assert d.kl == pytest.approx(0, abs=1e-7) and d.nll == pytest.approx(0, abs=1e-7) and d.top1 == 1.0
    assert d.tokens == 7 and d.kl_method == "exact"


def test_divergence_grows_with_the_damage_and_nll_and_top1_follow():
    rng = np.random.default_rng(1)
    ref = _log_softmax(5 * rng.normal(size=(30, 200)))
    trace = trace_from_logprobs(ref.argmax(axis=1), ref, k=20)
    found = []
    for noise in (0.0, 0.3, 1.0, 3.0):
        cand = _log_softmax(ref + noise * rng.normal(size=ref.shape))
        found.append(measure(trace, forced_from_logprobs(trace, cand)))
    kls = [d.kl for d in found]
    assert kls == sorted(kls) and kls[-1] > 10 * kls[1] > 0
    assert found[-1].nll > found[1].nll and found[-1].top1 < 1.0


def test_topk_only_candidate_side_is_flagged_and_its_bias_is_small_for_a_mild_damage():
    """vLLM gives the candidate's own top-k: unknown reference top-k tokens are bounded (kl_method "topk"). The
    bias against the exact candidate side, measured here on a mild damage, stays within 25%."""
    rng = np.random.default_rng(2)
    ref = _log_softmax(6 * rng.normal(size=(40, 500)))
    cand = _log_softmax(ref + 0.5 * rng.normal(size=ref.shape))
    trace = trace_from_logprobs(ref.argmax(axis=1), ref, k=20)
    exact = measure(trace, forced_from_logprobs(trace, cand))
    positions = []
    for t in range(len(trace)):
        top = np.argsort(-cand[t])[:20]
        known = {int(i): float(cand[t, i]) for i in top}
        known[int(trace.ids[t])] = float(cand[t, trace.ids[t]])
        positions.append(known)
    approx = measure(trace, forced_from_topk(trace, positions))
    assert approx.kl_method == "topk" and exact.kl_method == "exact"
    assert approx.nll == pytest.approx(exact.nll, abs=1e-5) and approx.top1 == exact.top1
    assert abs(approx.kl - exact.kl) <= 0.25 * exact.kl
    full = {int(i): float(cand[0, i]) for i in range(500)}  # all known: the same as exact
    one = forced_from_topk(TokenTrace(trace.ids[:1], trace.logprobs[:1], trace.top_ids[:1], trace.top_logprobs[:1]),
                           [full])
    assert one.exact


def test_trace_round_trips_through_its_compact_json():
    rng = np.random.default_rng(3)
    rows = _log_softmax(3 * rng.normal(size=(12, 1000)))
    trace = trace_from_logprobs(rows.argmax(axis=1), rows, k=20)
    back = TokenTrace.from_json(trace.to_json())
    assert np.array_equal(back.ids, trace.ids) and np.array_equal(back.top_ids, trace.top_ids)
    np.testing.assert_allclose(back.top_logprobs, trace.top_logprobs, atol=0.02, rtol=1e-3)  # float16
    assert len(str(trace.to_json())) < 200 * 12  # compact: ~170 bytes a token at k = 20


@pytest.mark.parametrize("bad", [{}, {"n": 2, "k": 3, "ids": "!!", "logprobs": "", "top_ids": "", "top_logprobs": ""},
                                 {"n": -1, "k": 1, "ids": "", "logprobs": "", "top_ids": "", "top_logprobs": ""}])
def test_a_broken_stored_trace_is_a_clear_error(bad):
    with pytest.raises(DivergenceError, match="re-make the baseline|not a packed"):
        TokenTrace.from_json(bad, "baseline cell x sample 3")


def test_a_candidate_side_of_another_length_is_refused():
    rows = _log_softmax(np.random.default_rng(4).normal(size=(5, 10)))
    trace = trace_from_logprobs(rows.argmax(axis=1), rows, k=3)
    with pytest.raises(DivergenceError, match="5 tokens"):
        forced_from_logprobs(trace, rows[:4])


# ------------------------------------------------------------------------------------------------ the gate

TOL = {level: gate.Tolerance(0.05, "test") for level in gate.LEVELS}


def test_cell_fails_only_on_a_significant_excess_over_its_tolerance():
    rng = np.random.default_rng(5)
    low = rng.exponential(0.01, size=20)
    high = rng.exponential(0.3, size=20)
    assert compare_divergence("c", "t-1K-en", low, TOL["cell"]).outcome == "pass"
    v = compare_divergence("c", "t-1K-en", high, TOL["cell"])
    assert v.outcome == "fail" and v.drop == pytest.approx(high.mean()) and v.unit == "nats/token KL"
    assert v.ci_low <= v.delta <= v.ci_high
    # Just over the tolerance on one noisy sample: not significant, passes with "more samples would tell".
    edge = compare_divergence("c", "t-1K-en", [0.0, 0.0, 0.21], TOL["cell"])
    assert edge.outcome == "pass" and "not significant" in edge.reason
    text = gate.format_failure(v)
    assert "nats/token KL" in text and "points" not in text


def test_a_a_false_alarm_rate_of_the_whole_divergence_gate_is_at_most_alpha():
    """Candidates whose divergence is noise at the tolerance's level never... fail more than alpha of the time:
    true mean exactly at T (the hardest null), 2 languages x 2 buckets, every level."""
    rng = np.random.default_rng(6)
    fails, runs = 0, 300
    for r in range(runs):
        cells = [("t", b, lang, rng.exponential(0.05, size=20)) for b in ("1K", "2K") for lang in ("en", "ja")]
        verdicts = gate_divergence("c", cells, TOL, seed=r, n_resamples=400)
        fails += any(v.outcome == "fail" for v in verdicts)
    assert fails / runs <= 0.05


def test_levels_ids_and_families():
    rng = np.random.default_rng(7)
    cells = [("t", b, lang, rng.exponential(0.01, size=10)) for b in ("1K", "2K") for lang in ("en", "es", "ja")]
    cells[-1] = ("t", "2K", "ja", rng.exponential(1.0, size=10))
    ids = {v.cell_id: v for v in gate_divergence("c", cells, TOL)}
    assert set(ids) == {"t-1K-en", "t-1K-es", "t-1K-ja", "t-2K-en", "t-2K-es", "t-2K-ja", "lang:en", "lang:es",
                        "lang:ja", "bucket:1K", "bucket:2K", "ALL"}
    assert ids["t-2K-ja"].outcome == "fail" and ids["t-2K-ja"].holm_family == 6 and ids["lang:ja"].outcome == "fail"
    assert ids["t-1K-en"].outcome == "pass" and ids["lang:en"].outcome == "pass"


def test_length_trend_recovers_a_slope_per_doubling_and_fails_on_a_steep_one():
    rng = np.random.default_rng(8)
    flat = [(b, rng.normal(0.1, 0.02, size=30)) for b in ("1K", "2K", "4K") for _ in range(2)]
    steep = [(b, rng.normal(0.1 * (i + 1), 0.02, size=30)) for i, b in enumerate(("1K", "2K", "4K")) for _ in range(2)]
    tol = gate.Tolerance(0.02, "test")
    v_flat = length_trend("c", "t", flat, tol)
    v_steep = length_trend("c", "t", steep, tol)
    assert v_flat.outcome == "pass" and abs(v_flat.candidate_mean) < 0.02
    assert v_steep.outcome == "fail" and v_steep.candidate_mean == pytest.approx(0.1, abs=0.01)
    assert v_steep.cell_id == "trend:t" and "per doubling" in v_steep.unit
    with pytest.raises(gate.GateInputError, match="two buckets"):
        length_trend("c", "t", [("1K", [0.1]), ("1K", [0.2])], tol)


def test_a_scored_prefix_is_compared_with_the_same_prefix():
    """vLLM drops the answer's last token where prompt + answer fill max_model_len: the divergence is over the
    positions scored, never over a mismatched alignment, and never 0 by default."""
    rng = np.random.default_rng(9)
    ref = _log_softmax(4 * rng.normal(size=(6, 40)))
    cand = _log_softmax(ref + rng.normal(size=ref.shape))
    trace = trace_from_logprobs(ref.argmax(axis=1), ref, k=40)
    rows = [{int(i): float(cand[t, i]) for i in range(40)} for t in range(5)]
    d = measure(trace, forced_from_topk(trace, rows))
    assert d.tokens == 5
    assert d.kl == pytest.approx(measure(trace.prefix(5), forced_from_logprobs(trace.prefix(5), cand[:5])).kl)
    with pytest.raises(DivergenceError):
        forced_from_topk(trace, [])


def test_which_engines_measure_the_divergence_is_known_without_opening_one():
    from longquant_checks.engines import divergence_unavailable

    assert divergence_unavailable("hf") is None and divergence_unavailable("vllm") is None
    assert "log-probabilities" in divergence_unavailable("openai")
