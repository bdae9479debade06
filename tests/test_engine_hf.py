"""The transformers engine on the real demo model: bf16 reference and bitsandbytes in-flight recipes (CPU)."""

import pytest

from longquant_checks import Cell, get_task
from longquant_checks.engines import UnsupportedError, open_engine
from longquant_checks.engines.base import cpu_dtype

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def samples(tok):
    return get_task("niah_single_2").generate(Cell("niah_single_2", 1024, "en"), tok, 3, 2)


@pytest.fixture(scope="module")
def reference_outputs(demo_path, samples):
    with open_engine("hf", str(demo_path), batch_size=3) as engine:
        # bf16 where the CPU has native bf16, else float32 (emulated bf16 is ~100x slower)
        assert engine.info.settings["dtype"] == cpu_dtype()
        return engine.generate(samples)


@pytest.mark.parametrize("recipe", ["bnb-int8", "bnb-nf4"])
def test_bitsandbytes_recipes_load_and_answer(demo_path, samples, reference_outputs, recipe):
    task = get_task("niah_single_2")
    with open_engine("hf", str(demo_path), recipe=recipe, batch_size=3) as engine:
        assert engine.info.settings["inflight"]["method"] == "bitsandbytes"
        outputs = engine.generate(samples)
    scores = [task.score(s, o.text) for s, o in zip(samples, outputs)]
    agreement = sum(a.text == b.text for a, b in zip(outputs, reference_outputs)) / len(samples)
    print(f"{recipe}: mean score {sum(scores) / len(scores):.2f}, same greedy text as bf16 on {agreement:.0%}")
    assert all(o.text.strip() for o in outputs)
    assert sum(scores) >= 1  # a quantized 135M model still finds a needle at 1K


def test_unsupported_pairs_are_refused_before_loading(demo_path):
    with pytest.raises(UnsupportedError, match="fp8-per-channel.*is a vLLM option"):
        open_engine("hf", str(demo_path), recipe="fp8-per-channel")
    with pytest.raises(UnsupportedError, match="produces a checkpoint; quantize first"):
        open_engine("hf", str(demo_path), recipe="gptq-w4a16")


def test_quantized_kv_cache_candidate(demo_path, samples, reference_outputs):
    """A KV-cache candidate on transformers: the reference's weights with a 4-bit quanto KV cache."""
    pytest.importorskip("optimum.quanto")
    task = get_task("niah_single_2")
    with open_engine("hf", str(demo_path), batch_size=3, kv_cache={"backend": "quanto", "nbits": 4}) as engine:
        assert engine.info.settings["kv_cache"] == {"backend": "quanto", "nbits": 4}
        outputs = engine.generate(samples)
    scores = [task.score(s, o.text) for s, o in zip(samples, outputs)]
    agreement = sum(a.text == b.text for a, b in zip(outputs, reference_outputs)) / len(samples)
    print(f"quanto int4 KV cache: mean score {sum(scores) / len(scores):.2f}, same text as the reference on {agreement:.0%}")
    assert all(o.text.strip() for o in outputs)
    assert sum(scores) >= 1  # a 4-bit KV cache at 1K still finds a needle


def test_batch_is_halved_on_out_of_memory_and_answers_stay_the_same(demo_path, samples, reference_outputs):
    """An injected allocator failure for batches over 1 (what a long bucket does on a small GPU): the engine retries
    the same prompts at half the batch, keeps the smaller size, and greedy answers match the unfailed run."""
    import torch

    with open_engine("hf", str(demo_path), batch_size=3) as engine:
        real = engine.model.generate

        def generate(*args, input_ids, **kwargs):
            if input_ids.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(*args, input_ids=input_ids, **kwargs)

        engine.model.generate = generate
        outputs = engine.generate(samples)
        assert engine.batch_size_reductions == [1] and engine.batch_size == 1
        assert [o.text for o in outputs] == [o.text for o in reference_outputs]
        with pytest.raises(MemoryError, match="even at batch size 1"):
            engine.model.generate = lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory"))
            engine.generate(samples[:1])


def test_teacher_forced_divergence_on_the_real_model(demo_path, samples, reference_outputs, damaged):
    """The reference's traces (from its batched greedy generation) teacher-forced through itself and through a
    damaged copy: the reference's own answers come back unchanged with ~0 divergence (the float noise of another
    batch shape); the damaged model diverges measurably. The answer each derives from the forced pass is its own
    greedy answer (the same text as its plain generation)."""
    from longquant_checks.divergence import measure
    from longquant_checks.engines.base import Scoring

    with open_engine("hf", str(demo_path), batch_size=3) as engine:
        traced = dict(engine.stream(samples, Scoring(top_k=20)))
        traces = {samples[i].id: o.trace for i, o in traced.items()}
        assert [traced[i].text for i in range(len(samples))] == [o.text for o in reference_outputs]
        assert all(t.k == 20 and len(t) == traced[i].n_output_tokens + (traced[i].finish_reason == "stop")
                   for i, t in ((i, traces[samples[i].id]) for i in traced))
        again = dict(engine.stream(samples, Scoring(forced=traces)))
    for i, out in again.items():
        d = measure(traces[samples[i].id], out.forced)
        assert out.text == reference_outputs[i].text
        assert d.top1 == 1.0 and d.kl < 1e-4 and abs(d.nll) < 1e-3, d
    with open_engine("hf", str(damaged), batch_size=3) as engine:
        plain = engine.generate(samples)
        forced = dict(engine.stream(samples, Scoring(forced=traces)))
    found = [measure(traces[samples[i].id], o.forced) for i, o in sorted(forced.items())]
    assert [forced[i].text for i in range(len(samples))] == [o.text for o in plain]
    print("damaged copy:", found)
    assert min(d.kl for d in found) > 1e-3 and max(d.nll for d in found) > 0


def test_a_a_runs_at_other_batch_sizes_pass_the_divergence_gate(demo_path, samples):
    """The A/A false-alarm check on the real model: the reference's traces made at batch sizes 1, 2 and 3 (other
    paddings, other float rounding), each teacher-forced through the reference; a noise floor measured from the
    batch-3 run sets the 16-bit tolerances; every level of the divergence gate passes for every other run (0 false
    alarms of the 2 x 3 verdict sets; the gate's own A/A rate on synthetic data is tests/test_divergence.py)."""
    from longquant_checks import gate
    from longquant_checks.config import DivergenceConfig
    from longquant_checks.divergence import SIGNALS, measure
    from longquant_checks.divergence_gate import gate_divergence
    from longquant_checks.engines.base import Scoring
    from longquant_checks.noise_floor import DivergenceTolerances, NoiseFloor

    runs = {}
    with open_engine("hf", str(demo_path), batch_size=1) as engine:
        for batch in (3, 2, 1):
            engine.batch_size = batch
            traced = dict(engine.stream(samples, Scoring(top_k=20)))
            traces = {samples[i].id: o.trace for i, o in traced.items()}
            forced = dict(engine.stream(samples, Scoring(forced=traces)))
            runs[batch] = [measure(traces[samples[i].id], forced[i].forced) for i in range(len(samples))]
    floor = NoiseFloor.measure({"c": {sig: [d.value(sig) for d in runs[3]] for sig in SIGNALS}}, "test", "")
    print("floor:", floor.signals["kl"]["mean"], "per batch size:", {b: [d.kl for d in r] for b, r in runs.items()})
    for signal in SIGNALS:
        tolerances = DivergenceTolerances.build("16-bit", DivergenceConfig(enabled=True, signal=signal), floor)
        for batch in (2, 1):
            values = [d.value(signal) for d in runs[batch]]
            verdicts = gate_divergence("reference", [("niah_single_2", "1K", "en", values)], tolerances.by_level,
                                       signal)
            assert all(v.outcome == "pass" for v in verdicts), [gate.format_failure(v) for v in verdicts]
