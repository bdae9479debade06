"""The real demo model (SmolLM2-135M-Instruct, transformers, CPU) answers generated prompts.

Slow on 2 cores (~3 s per 1K-2K sample): marked `model`.
"""

import json

import pytest

from longquant_checks import Cell, get_task, task_names
from longquant_checks.checkpoints.demo import GGUF_SHA256, demo_model_dir

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def engine(demo_path):
    from longquant_checks.engines.hf import HFEngine

    with HFEngine(str(demo_path), batch_size=4) as eng:
        yield eng


def test_demo_checkpoint_is_a_plain_verified_bf16_checkpoint(demo_path):
    assert demo_path == demo_model_dir()
    marker = json.loads((demo_path / "longquant-demo.json").read_text())
    assert marker["gguf_sha256"] == GGUF_SHA256
    config = json.loads((demo_path / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (demo_path / "model.safetensors").stat().st_size > 250_000_000  # bf16, not packed Q4_1


def test_reference_model_retrieves_needles_at_2k(engine, tok):
    task = get_task("niah_single_1")
    samples = task.generate(Cell("niah_single_1", 2048, "en"), tok, 4, 0)
    outputs = engine.generate(samples)
    scores = [task.score(s, o.text) for s, o in zip(samples, outputs)]
    assert sum(scores) / len(scores) >= 0.75, [o.text for o in outputs]
    assert all(o.n_prompt_tokens == s.n_tokens for s, o in zip(samples, outputs))


def test_every_family_runs_and_the_easy_ones_score_well_at_1k(engine, tok):
    easy = {"niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multikey_2"}
    means = {}
    for name in task_names():
        task = get_task(name)
        samples = task.generate(Cell(name, 1024, "en"), tok, 2, 1)
        outputs = engine.generate(samples)
        scores = [task.score(s, o.text) for s, o in zip(samples, outputs)]
        assert all(0.0 <= x <= 1.0 for x in scores)
        assert all(o.n_output_tokens <= s.max_new_tokens for s, o in zip(samples, outputs))
        means[name] = sum(scores) / len(scores)
    print("mean score per family at 1K (n=2):", means)
    assert sum(means[n] for n in easy) / len(easy) >= 0.75, means
