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
