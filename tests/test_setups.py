"""Engine setups, accepted settings and the commands the gate prints (no model needed)."""

from __future__ import annotations

import pytest

from longquant_checks.config import ConfigError, parse_config
from longquant_checks.errors import SettingsError
from longquant_checks.messages import RefreshCommands
from longquant_checks.run import GateRun
from longquant_checks.schema import Cell
from longquant_checks.setups import EngineSetup, check_settings, reference_settings, setup_differences


def test_baseline_setup_holds_what_changes_the_reference_answers():
    base = EngineSetup("vllm", "cuda:0", {"dtype": "bfloat16", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8})
    setup = base.baseline_setup()
    assert setup == {"engine": "vllm", "dtype": "bfloat16", "device": "cuda", "kv_cache": "auto",
                     "max_model_len": None, "rope": None}
    assert base.label() == "vllm-cuda-bfloat16"
    # Speed-only settings do not make another setup; what changes answers does.
    assert EngineSetup("vllm", "cuda", {"dtype": "bfloat16", "tensor_parallel_size": 4}).label() == base.label()
    kv = EngineSetup("vllm", "cuda", {"dtype": "bfloat16", "kv_cache_dtype": "fp8"})
    assert kv.label() == "vllm-cuda-bfloat16-kv_fp8"
    rope = EngineSetup("vllm", "cuda", {"dtype": "bfloat16", "max_model_len": 131072,
                                        "hf_overrides": {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}})
    assert rope.label().startswith("vllm-cuda-bfloat16-len131072-rope")
    assert [d[0] for d in setup_differences(base.baseline_setup(), rope.baseline_setup())] == ["max_model_len", "rope"]
    assert EngineSetup("hf", "cpu", {"dtype": "float32"}).label() == "hf-cpu-float32"
    assert EngineSetup("hf", "cpu", {"dtype": "float32"}).baseline_setup()["engine"] != base.baseline_setup()["engine"]


def test_unknown_setting_names_engine_and_accepted():
    with pytest.raises(SettingsError) as exc:
        check_settings("vllm", {"max_model_len": 8192, "max_num_seqs": 8}, "candidate 'x'")
    text = str(exc.value)
    assert "candidate 'x': unknown setting(s) 'max_num_seqs' for engine 'vllm'; accepted: dtype, max_model_len" in text
    with pytest.raises(SettingsError, match="trust_remote_code is set on the reference or candidate itself"):
        check_settings("hf", {"trust_remote_code": True}, "reference")


def test_vllm_engine_refuses_unknown_settings_before_starting():
    """vLLM used to drop engine_args it did not list, while they still entered the cache key."""
    from longquant_checks.engines.vllm import VLLMEngine

    with pytest.raises(SettingsError, match="'no_such_arg' for engine 'vllm'"):
        VLLMEngine("/nonexistent", device="cpu", no_such_arg=1)


def test_openai_engine_refuses_unknown_settings():
    """The OpenAI engine used to swallow every unknown keyword."""
    from longquant_checks.engines.openai import OpenAIEngine

    with pytest.raises(TypeError, match="no_such_arg"):
        OpenAIEngine("/nonexistent", base_url="http://127.0.0.1:9/v1", no_such_arg=1)


def _config(**extra):
    return parse_config({"reference": "demo", "engine": "hf", "device": "cpu", **extra})


def test_gate_run_checks_every_checkpoints_settings_against_its_engine():
    with pytest.raises(ConfigError, match="engine_args of candidate 'v' .engine vllm.: unknown setting.s. 'batch_size'"):
        GateRun(_config(candidates=[{"name": "v", "source": "demo", "engine": "vllm",
                                     "engine_args": {"batch_size": 4}}]))
    with pytest.raises(ConfigError, match="shared engine_args, used by candidate 'h' .engine hf."):
        GateRun(_config(engine="vllm", engine_args={"gpu_memory_utilization": 0.8},
                        candidates=[{"name": "h", "recipe": "bnb-nf4", "engine": "hf"}]))
    with pytest.raises(ConfigError, match="engine_args of the reference"):
        GateRun(_config(reference={"source": "demo", "engine_args": {"tensor_parallel_size": 2}}))


def test_reference_on_another_engine_takes_only_that_engines_settings():
    settings, left_out = reference_settings("hf", {"max_model_len": 32768}, {"tensor_parallel_size": 2, "dtype": "bfloat16"})
    assert settings == {"max_model_len": 32768, "dtype": "bfloat16"} and left_out == ["tensor_parallel_size"]
    run = GateRun(_config(engine="vllm", reference={"source": "demo", "engine_args": {"tensor_parallel_size": 2}},
                          candidates=[{"name": "nf4", "recipe": "bnb-nf4", "engine": "hf"},
                                      {"name": "kv", "source": "demo", "engine_args": {"kv_cache_dtype": "fp8"}}]))
    # Each candidate meets the reference on its own engine kind; a candidate's own settings are its treatment.
    assert run.baseline_setup_for("nf4").kind == "hf" and run.baseline_setup_for("kv").kind == "vllm"
    assert run.baseline_setup_for("kv").settings == {"tensor_parallel_size": 2}
    assert run.setup_for("kv").settings == {"kv_cache_dtype": "fp8"}


def test_refresh_command_repeats_the_invocation_with_the_cells_selection():
    commands = RefreshCommands(("fixtures", "-k", "nf4", "--lq-update-baselines", "missing", "-x", "--lq-limit=3",
                                "-knf4", "--lq-config=fixtures/gpu.toml"))
    cell = Cell("niah_single_3", 1024, "en")
    assert commands.refresh("all", cell) == ("python -m pytest fixtures -x --lq-config=fixtures/gpu.toml "
                                             "--lq-update-baselines=all -k niah_single_3-1K-en")
