"""The prompt's framing beyond its content: the system prompt (none by default, as the source studies ran, the
template's own, or a custom text) and the answer prefix that starts the assistant turn. Both are part of each
sample's identity and are recorded in results and baselines."""

from __future__ import annotations

import pytest

from longquant_checks import Cell, get_task
from longquant_checks.config import ConfigError, load_config, prompt_style
from longquant_checks.text.tokens import MODEL_DEFAULT, PromptStyle, PromptTokenizer, TokenizerError

SMOL_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Llama-3 style: a date line injected as the system turn when the conversation has none.
LLAMA_LIKE = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|start_header_id|>system<|end_header_id|>\n\n"
    "Knowledge cutoff: 2023<|eot_id|>{% endif %}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}{% if not (loop.last and continue_final_message) %}<|eot_id|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
# Gemma style: no system role at all; and a past assistant turn is rendered otherwise than the generation prompt
# opens one (as reasoning templates do), so a started answer cannot be continued verbatim: no prefill.
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<start_of_turn>{{ 'model\n<think></think>' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def with_template(demo_path, template: str | None, style: PromptStyle) -> PromptTokenizer:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(demo_path))
    if template is not None:
        hf.chat_template = template
    return PromptTokenizer(hf, name="test", style=style)


def test_no_system_prompt_by_default_and_smollm2s_own_cut_out(demo_path):
    none = PromptTokenizer.from_pretrained(demo_path)
    assert none.style == PromptStyle(system_prompt=None, answer_prefix=True)
    assert none.frame.prefix_text == "<|im_start|>user\n" and none.frame.system_text is None
    default = PromptTokenizer.from_pretrained(demo_path, style=PromptStyle(MODEL_DEFAULT))
    assert default.frame.prefix_text.startswith("<|im_start|>system\n" + SMOL_DEFAULT)
    assert default.frame.system_text == SMOL_DEFAULT
    custom = PromptTokenizer.from_pretrained(demo_path, style=PromptStyle("Answer with the number only."))
    assert custom.frame.prefix_text == "<|im_start|>system\nAnswer with the number only.<|im_end|>\n<|im_start|>user\n"
    # Each is its own tokenizer identity (the sample cache key) and its own prompts.
    assert len({none.fingerprint, default.fingerprint, custom.fingerprint}) == 3
    cell = Cell("niah_single_3", 1024, "en")
    hashes = {get_task("niah_single_3").generate(cell, t, 1, 0)[0].prompt_sha256 for t in (none, default, custom)}
    assert len(hashes) == 3


def test_a_template_that_injects_a_system_turn_elsewhere(demo_path):
    none = with_template(demo_path, LLAMA_LIKE, PromptStyle())
    assert "Knowledge cutoff" not in none.frame.prefix_text
    assert none.frame.prefix_text.endswith("<|start_header_id|>user<|end_header_id|>\n\n")
    default = with_template(demo_path, LLAMA_LIKE, PromptStyle(MODEL_DEFAULT))
    assert default.frame.system_text == "Knowledge cutoff: 2023"
    assert none.frame.prefill and default.frame.prefill  # it continues a started assistant turn


def test_a_template_without_a_system_role(demo_path):
    none = with_template(demo_path, NO_SYSTEM, PromptStyle())
    assert none.frame.prefix_text == "<start_of_turn>user\n" and not none.frame.prefill
    with pytest.raises(TokenizerError, match="cannot render a system\\+user conversation"):
        with_template(demo_path, NO_SYSTEM, PromptStyle("Be brief."))
    # No prefill: the answer prefix is left out, and the record says so.
    sample = get_task("niah_single_1").generate(Cell("niah_single_1", 1024, "en"), none, 1, 0)[0]
    assert "answer_prefix" not in sample.metadata and sample.metadata["prompt"]["answer_prefix"] is False
    assert [m["role"] for m in sample.messages] == ["user"]


@pytest.mark.parametrize("name", ["niah_single_3", "niah_multiquery", "vt", "cwe", "qa_1"])
def test_answer_prefix_starts_the_assistant_turn(tok, demo_path, name):
    cell = Cell(name, 2048, "es")
    sample = get_task(name).generate(cell, tok, 1, 0)[0]
    prefix = sample.metadata["answer_prefix"]
    assert prefix and sample.messages[-1] == {"role": "assistant", "content": prefix}
    end = tok.frame.suffix_ids + tuple(tok.encode(prefix))
    assert tuple(sample.prompt_token_ids[-len(end):]) == end
    assert not any(answer in prefix for answer in sample.answers)  # it never gives the answer away
    off = PromptTokenizer.from_pretrained(demo_path, style=PromptStyle(answer_prefix=False))
    plain = get_task(name).generate(cell, off, 1, 0)[0]
    assert "answer_prefix" not in plain.metadata and plain.messages[-1]["role"] == "user"
    assert tuple(plain.prompt_token_ids[-len(off.frame.suffix_ids):]) == off.frame.suffix_ids
    assert plain.n_tokens + plain.max_new_tokens >= 0.995 * 2048


def test_niah_prefixes_are_in_the_language(tok):
    sample = get_task("niah_single_1").generate(Cell("niah_single_1", 1024, "de"), tok, 1, 0)[0]
    key = sample.metadata["keys"][0]
    assert sample.metadata["answer_prefix"] == f"Die besondere magische Zahl für {key}, die im vorliegenden Text " \
                                              "genannt wird, lautet"


def write(tmp_path, extra: str):
    path = tmp_path / "longquant.toml"
    path.write_text(f'reference = "demo"\n{extra}\n')
    return path


def test_config_system_prompt_and_answer_prefix(tmp_path):
    assert prompt_style(load_config(write(tmp_path, "")).gate) == PromptStyle(None, True)
    assert prompt_style(load_config(write(tmp_path, 'system_prompt = "model-default"')).gate).system_prompt \
        == MODEL_DEFAULT
    style = prompt_style(load_config(write(tmp_path, 'system_prompt = { text = "Be brief." }\n'
                                                     "answer_prefix = false")).gate)
    assert style == PromptStyle("Be brief.", False)
    with pytest.raises(ConfigError, match="system_prompt"):
        load_config(write(tmp_path, 'system_prompt = "You are helpful."'))


def test_a_baseline_of_another_prompt_style_is_refused_by_name(tok, demo_path):
    from longquant_checks.baselines import BaselineEntry, mismatches

    cell = Cell("niah_single_1", 1024, "en")
    samples = get_task("niah_single_1").generate(cell, tok, 2, 0)
    old = PromptTokenizer.from_pretrained(demo_path, style=PromptStyle(MODEL_DEFAULT, answer_prefix=False))
    stored = get_task("niah_single_1").generate(cell, old, 2, 0)
    entry = BaselineEntry("demo", cell.task, cell.bucket, cell.language, 2, 50.0,
                          [{"id": s.id, "prompt_sha256": s.prompt_sha256, "score": 1.0, "text": ""} for s in stored],
                          task_version=get_task("niah_single_1").version, prompt=stored[0].metadata["prompt"])
    problems = mismatches(entry, samples, "", {}, entry.task_version)
    assert any("the prompt style changed (system prompt model-default, answer prefix off in the baseline, "
               "system prompt none, answer prefix on now)" in p for p in problems), problems
