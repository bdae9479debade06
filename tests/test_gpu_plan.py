"""GPU plans checked before any work (run on CPU with given device counts): no CUDA, too few GPUs, and buckets past
the model's length without RoPE scaling."""

from __future__ import annotations

import os

import pytest

from longquant_checks import run as run_module
from longquant_checks.checkpoints.info import context_length, yarn_overrides
from longquant_checks.config import ConfigError, parse_config
from longquant_checks.run import GateRun

pytest_plugins = ["pytester"]


def _config(**extra):
    data = {"reference": "demo", "engine": "vllm", "device": "cuda", "tasks": ["niah_single_2"], "languages": ["en"],
            "candidates": [{"name": "fp8", "recipe": "fp8-inflight"}], **extra}
    return parse_config(data)


def test_a_gpu_plan_on_a_machine_without_cuda_is_an_error(monkeypatch):
    monkeypatch.setattr(run_module, "visible_gpus", lambda: 0)
    with pytest.raises(ConfigError, match="device = 'cuda', but this machine shows no CUDA GPU.*device = \"cpu\""):
        GateRun(_config())


def test_parallel_sizes_beyond_the_visible_gpus_are_an_error(monkeypatch):
    monkeypatch.setattr(run_module, "visible_gpus", lambda: 2)
    GateRun(_config(engine_args={"tensor_parallel_size": 2}))  # fits
    with pytest.raises(ConfigError, match="'big' needs 4 GPUs .tensor x pipeline x data parallel size. but this "
                                          "process sees 2"):
        GateRun(_config(candidates=[{"name": "big", "recipe": "fp8-inflight",
                                     "engine_args": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}}]))
    with pytest.raises(ConfigError, match="tensor_parallel_size = 0"):
        GateRun(_config(engine_args={"tensor_parallel_size": 0}))


def test_context_length_follows_the_shared_rope_overrides(demo_path):
    assert context_length(demo_path) == 8192
    overrides = yarn_overrides(demo_path, 131072)
    assert overrides["rope_parameters"] == {"rope_type": "yarn", "factor": 16.0,
                                            "original_max_position_embeddings": 8192, "rope_theta": 100000.0}
    assert context_length(demo_path, overrides) == 131072
    assert context_length(demo_path, {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}) == 32768


def test_a_bucket_past_the_model_without_rope_scaling_is_not_gated_with_the_setting_that_enables_it(monkeypatch):
    monkeypatch.setattr(run_module, "visible_gpus", lambda: 1)
    run = GateRun(_config(buckets=["8K", "128K"]))
    cells = {c.cell.id: c.not_gated for c in run.cases() if c.level == "cell"}
    assert cells["niah_single_2-8K-en"] is None
    reason = cells["niah_single_2-128K-en"]
    assert reason.reason == "too-long" and "exceeds the model's max length 8192 without RoPE scaling" in reason.detail
    assert 'rope_type = "yarn", factor = 16.0' in reason.detail and "max_model_len = 131072" in reason.detail
    # The suggested setting, pasted into the config, gates the bucket.
    overrides = yarn_overrides(run.reference.path, 131072)
    stretched = GateRun(_config(buckets=["8K", "128K"],
                                engine_args={"max_model_len": 131072, "hf_overrides": overrides}))
    assert all(c.not_gated is None for c in stretched.cases() if c.level == "cell")
    # A max_model_len the model cannot reach without scaling is capped, not passed on to fail at engine start.
    capped = GateRun(_config(buckets=["128K"], engine_args={"max_model_len": 131072}))
    assert [c.not_gated.reason for c in capped.cases() if c.level == "cell"] == ["too-long"]


def test_gpu_slices_are_disjoint_cover_every_gpu_and_fit_the_widest_checkpoint():
    from longquant_checks.errors import LongquantError
    from longquant_checks.gpus import auto_workers, slices

    eight = [str(i) for i in range(8)]
    assert auto_workers(eight, 2) == 4 and auto_workers(eight, 1) == 8 and auto_workers(eight, 3) == 2
    assert slices(eight, 2, 4) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    three = slices(eight, 3, 2)  # a TP=3 checkpoint: two workers, the last also holds the 2 left over
    assert three == [["0", "1", "2"], ["3", "4", "5", "6", "7"]]
    assert sorted(sum(three, [])) == eight
    assert slices(["4", "6"], 1, 2) == [["4"], ["6"]]  # the user's CUDA_VISIBLE_DEVICES order is kept
    with pytest.raises(LongquantError, match="-n 3 workers x 4 GPUs each .* needs 12 GPUs, but 8 are visible.*-n 2"):
        slices(eight, 4, 3)
    with pytest.raises(LongquantError, match="spans 4 GPUs .* but 2 are visible"):
        auto_workers(["0", "1"], 4)


def test_xdist_workers_get_slices_of_the_widest_checkpoint(pytester, monkeypatch):
    """The plugin's hooks on a GPU plan (reference TP=2, a TP=1 candidate) with 4 listed GPUs: -n auto is 2, and
    each worker pins a disjoint slice of 2 before CUDA is touched."""
    from longquant_checks import plugin

    pytester.makefile(".toml", longquant='reference = "demo"\nengine = "vllm"\ndevice = "cuda"\n'
                      'engine_args = { tensor_parallel_size = 2 }\n'
                      '[[candidates]]\nname = "fp8"\nrecipe = "fp8-inflight"\n'
                      'engine_args = { tensor_parallel_size = 1 }\n')
    monkeypatch.chdir(pytester.path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    config = pytester.parseconfig()
    assert plugin.pytest_xdist_auto_num_workers(config) == 2
    pinned = []
    for index in range(2):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
        plugin._pin_worker_resources(config, index, 2)
        pinned.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert pinned == ["0,1", "2,3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    with pytest.raises(pytest.UsageError, match="-n 3 workers x 2 GPUs"):
        plugin._pin_worker_resources(config, 0, 3)


def test_several_hosts_with_ray_refuse_xdist(pytester):
    pytester.makefile(".toml", longquant='reference = "demo"\nengine = "vllm"\ndevice = "cuda"\n'
                      'engine_args = { tensor_parallel_size = 8, pipeline_parallel_size = 2, '
                      'distributed_executor_backend = "ray" }\n')
    pytester.makepyfile(test_gate="def test_long_context(lq_cell):\n    lq_cell.check()\n")
    result = pytester.runpytest_subprocess("-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*the reference use distributed_executor_backend = \"ray\"*without -n*"])


def test_ray_settings_reach_vllm_as_engine_arguments():
    from longquant_checks.engines.vllm import llm_arguments, resolve_settings

    args = llm_arguments(resolve_settings("cuda", {"tensor_parallel_size": 8, "pipeline_parallel_size": 2,
                                                   "distributed_executor_backend": "ray", "data_parallel_size": 1}))
    assert args["distributed_executor_backend"] == "ray" and args["tensor_parallel_size"] == 8
    assert args["pipeline_parallel_size"] == 2 and args["data_parallel_size"] == 1 and args["dtype"] == "bfloat16"


def test_the_plugin_loads_without_xdist(pytester):
    """README command 1 installs no pytest-xdist: the plugin's xdist hooks must be optional there."""
    pytester.makefile(".toml", longquant='reference = "demo"\nengine = "hf"\ndevice = "cpu"\n'
                      '[[candidates]]\nname = "nf4"\nrecipe = "bnb-nf4"\n')
    pytester.makepyfile(test_gate="def test_long_context(lq_cell):\n    lq_cell.check()\n")
    result = pytester.runpytest_subprocess("-p", "no:xdist", "--collect-only", "-q")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK
