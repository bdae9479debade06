"""Bundled presets: every one parses and validates, and merge_preset's rules. Pure parsing: nothing is downloaded."""

import inspect
import re

import pytest

from longquant_checks.config import parse_config
from longquant_checks.errors import UnknownValueError
from longquant_checks.presets import PRESETS, load_preset, merge_preset

EXPECTED = ["llama-3.1-70b-instruct", "llama-3.1-8b-instruct", "qwen2.5-32b-instruct", "qwen2.5-72b-instruct",
            "qwen2.5-7b-instruct"]
QWEN = [name for name in EXPECTED if name.startswith("qwen")]
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000.0}
# vLLM 0.32 does not multiply a YaRN config's max_position_embeddings by the factor: it must be lifted too.
HF_OVERRIDES = {"max_position_embeddings": 131072, "rope_parameters": YARN}


def test_the_five_reference_models_are_bundled():
    assert PRESETS == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_preset_validates_as_a_config(name):
    config = parse_config(merge_preset(load_preset(name), {}))
    gate = config.gate
    assert gate.engine == "vllm" and gate.device == "cuda" and gate.samples == 50
    assert gate.engine_args["max_model_len"] == 131072
    assert max(gate.buckets) == 131072 and min(gate.buckets) == 8192
    assert "en" in gate.languages and len([lang for lang in gate.languages if lang != "en"]) >= 3
    assert gate.candidates and all(c.precision for c in gate.candidates)


@pytest.mark.parametrize("name", EXPECTED)
def test_hub_ids_look_like_owner_slash_name(name):
    gate = parse_config(merge_preset(load_preset(name), {})).gate
    sources = [gate.reference.source] + [c.source for c in gate.candidates if c.source]
    assert all(HUB_ID.match(s) for s in sources), sources
    assert len(set(sources)) == len(sources)
    # The reference model is the one the preset is named after.
    assert gate.reference.source.lower().split("/")[1] == name


@pytest.mark.parametrize("name", EXPECTED)
def test_candidate_names_are_unique_and_valid(name):
    names = [c["name"] for c in load_preset(name)["candidates"]]
    assert len(set(names)) == len(names)
    assert all(re.match(r"^[A-Za-z0-9][A-Za-z0-9_.]*$", n) and n != "reference" for n in names)


@pytest.mark.parametrize("name", EXPECTED)
def test_bnb_nf4_runs_in_transformers_with_only_keys_it_accepts(name):
    gate = parse_config(merge_preset(load_preset(name), {})).gate
    nf4 = [c for c in gate.candidates if c.recipe == "bnb-nf4"]
    assert len(nf4) == 1 and nf4[0].engine == "hf" and nf4[0].precision == "4-bit"
    # The transformers engine rejects vLLM-only keys: they must not sit in the shared engine_args.
    from longquant_checks.engines.hf import HFEngine  # torch is imported only when an engine opens

    hf_keys = set(inspect.signature(HFEngine.__init__).parameters) - {"self", "model_path", "device", "inflight"}
    assert {"batch_size", "max_model_len"} <= hf_keys
    assert set(gate.engine_args) <= hf_keys and set(nf4[0].engine_args) <= hf_keys


@pytest.mark.parametrize("name", QWEN)
def test_qwen_presets_carry_the_yarn_override_on_every_vllm_checkpoint(name):
    gate = parse_config(merge_preset(load_preset(name), {})).gate
    assert gate.engine_args["max_model_len"] == 131072
    vllm_args = [gate.reference.engine_args] + [c.engine_args for c in gate.candidates
                                                if (c.engine or gate.engine) == "vllm"]
    assert len(vllm_args) == len(gate.candidates)  # all but bnb_nf4, plus the reference
    for args in vllm_args:
        assert args["hf_overrides"] == HF_OVERRIDES
    # Without YaRN the transformers candidate stays at Qwen2.5's native 32K.
    nf4 = next(c for c in gate.candidates if c.recipe == "bnb-nf4")
    assert nf4.engine_args["max_model_len"] == 32768 and "hf_overrides" not in nf4.engine_args


@pytest.mark.parametrize("name", [n for n in EXPECTED if n.startswith("llama")])
def test_llama_presets_need_no_rope_override(name):
    gate = parse_config(merge_preset(load_preset(name), {})).gate
    assert all("hf_overrides" not in c.engine_args for c in gate.candidates)
    assert "hf_overrides" not in gate.reference.engine_args


def test_unknown_preset_names_the_accepted_ones():
    with pytest.raises(UnknownValueError) as err:
        load_preset("llama-3.1-8b")
    message = str(err.value)
    assert "unknown preset 'llama-3.1-8b'" in message
    assert all(name in message for name in EXPECTED)
    with pytest.raises(UnknownValueError):
        load_preset("../config")


def test_load_preset_returns_a_fresh_dict():
    first = load_preset("qwen2.5-7b-instruct")
    first["candidates"].clear()
    first["engine_args"]["max_model_len"] = 1
    again = load_preset("qwen2.5-7b-instruct")
    assert again["candidates"] and again["engine_args"]["max_model_len"] == 131072


# -- merge semantics ---------------------------------------------------------------------------------------------

PRESET = {
    "reference": {"source": "org/model", "engine_args": {"tensor_parallel_size": 4, "hf_overrides": {"a": 1}}},
    "engine": "vllm",
    "samples": 50,
    "languages": ["en", "zh"],
    "engine_args": {"max_model_len": 131072, "dtype": "bfloat16"},
    "candidates": [{"name": "awq", "source": "org/model-AWQ", "precision": "4-bit"},
                   {"name": "fp8", "source": "org/model-FP8", "precision": "8-bit"}],
}


def test_user_scalars_and_lists_override_the_presets():
    merged = merge_preset(PRESET, {"samples": 10, "languages": ["sw"], "mode": "strict"})
    assert merged["samples"] == 10 and merged["languages"] == ["sw"] and merged["mode"] == "strict"
    assert merged["engine"] == "vllm" and merged["candidates"] == PRESET["candidates"]


def test_user_candidates_are_added_and_same_names_replaced():
    mine = {"name": "fp8", "source": "me/model-FP8-better", "precision": "8-bit"}
    extra = {"name": "nf4", "recipe": "bnb-nf4", "engine": "hf"}
    merged = merge_preset(PRESET, {"candidates": [mine, extra]})
    assert [c["name"] for c in merged["candidates"]] == ["awq", "fp8", "nf4"]
    assert merged["candidates"][1] == mine and merged["candidates"][2] == extra


def test_engine_args_merge_per_key():
    merged = merge_preset(PRESET, {"engine_args": {"dtype": "float16", "gpu_memory_utilization": 0.8}})
    assert merged["engine_args"] == {"max_model_len": 131072, "dtype": "float16", "gpu_memory_utilization": 0.8}


def test_reference_merges_as_a_table():
    # A string replaces the source and keeps the preset's engine_args (a local copy keeps its RoPE override).
    merged = merge_preset(PRESET, {"reference": "/models/local-copy"})
    assert merged["reference"] == {"source": "/models/local-copy", "engine_args": PRESET["reference"]["engine_args"]}
    merged = merge_preset(PRESET, {"reference": {"name": "mine", "engine_args": {"tensor_parallel_size": 8}}})
    assert merged["reference"] == {"source": "org/model", "name": "mine",
                                   "engine_args": {"tensor_parallel_size": 8, "hf_overrides": {"a": 1}}}


def test_keys_only_the_user_sets_are_kept():
    merged = merge_preset({"engine": "vllm"}, {"candidates": [{"name": "x", "source": "a/b"}],
                                               "engine_args": {"dtype": "float16"}, "reference": "a/c"})
    assert merged == {"engine": "vllm", "candidates": [{"name": "x", "source": "a/b"}],
                      "engine_args": {"dtype": "float16"}, "reference": "a/c"}


def test_merge_changes_neither_argument():
    user = {"candidates": [{"name": "awq", "source": "me/awq"}], "engine_args": {"dtype": "float16"},
            "reference": {"engine_args": {"tensor_parallel_size": 8}}}
    preset_before, user_before = repr(PRESET), repr(user)
    merged = merge_preset(PRESET, user)
    merged["candidates"][0]["source"] = "changed"
    merged["engine_args"]["x"] = 1
    merged["reference"]["engine_args"]["hf_overrides"]["a"] = 2
    assert repr(PRESET) == preset_before and repr(user) == user_before


def test_a_real_preset_merged_with_user_keys_still_validates():
    user = {"samples": 20, "languages": ["en", "ta"], "engine_args": {"dtype": "bfloat16"},
            "candidates": [{"name": "qwen_awq", "source": "/models/my-awq", "precision": "4-bit"},
                           {"name": "my_fp8", "recipe": "fp8-dynamic"}]}
    gate = parse_config(merge_preset(load_preset("qwen2.5-7b-instruct"), user)).gate
    assert gate.samples == 20 and gate.languages == ["en", "ta"]
    assert gate.engine_args == {"max_model_len": 131072, "dtype": "bfloat16"}
    names = [c.name for c in gate.candidates]
    assert names[-1] == "my_fp8" and names.count("qwen_awq") == 1
    assert gate.candidates[0].source == "/models/my-awq" and gate.candidates[0].engine_args == {}
