"""Efficiency figures (meter.py, the engines' resources): the arithmetic and parsing; the real runs that record them are
in tests/test_cli_gate.py (transformers) and tests/test_engine_vllm.py (vLLM)."""

from __future__ import annotations

import json

import pytest

from longquant_checks.engines.base import kv_bytes_per_token
from longquant_checks.engines.vllm import _logged_figures
from longquant_checks.meter import StreamMeter, read_proc_status, weights_on_disk
from longquant_checks.schema import Cell

SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}


def test_kv_bytes_per_token_from_a_config():
    assert kv_bytes_per_token(SMOLLM2, "float32") == 2 * 30 * 3 * 64 * 4
    assert kv_bytes_per_token(SMOLLM2, "torch.bfloat16") == 2 * 30 * 3 * 64 * 2
    assert kv_bytes_per_token({"text_config": {**SMOLLM2, "head_dim": 128}}, "fp8") == 2 * 30 * 3 * 128
    assert kv_bytes_per_token({"num_hidden_layers": 2}, "float32") is None  # heads unknown: no figure, no guess
    assert kv_bytes_per_token(SMOLLM2, "float64x") is None


def test_stream_meter_counts_per_bucket_and_names_its_caveats(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    meter = StreamMeter()
    for bucket, prompt in ((1024, 1000), (1024, 1010), (2048, 2000)):
        meter.add(Cell("niah_single_3", bucket, "en"), prompt, 10, 0.5)
    record = meter.record(checkpoint="nf4", key="k" * 64, identity={"fingerprint": "f", "recipe": "bnb-nf4"},
                          engine_identity={"kind": "hf", "device": "cpu", "settings": {"dtype": "float32"}},
                          engine_version="5", resources={"peak_memory_bytes": 5, "memory_kind": "rss"},
                          start_seconds=1.234, weights_path=str(tmp_path), in_flight=True)
    assert record["samples"] == 3 and record["prompt_tokens"] == 4010 and record["output_tokens"] == 30
    assert record["buckets"]["1K"] == {"samples": 2, "prompt_tokens": 2010, "output_tokens": 20,
                                       "seconds_per_sample": 0.5}
    assert record["prompt_tokens_per_second"] > 0 and record["size_on_disk_bytes"] == 1000
    assert record["weights_memory_bytes"] is None  # in flight: the files on disk are not what it holds
    assert any("in flight" in c for c in record["caveats"]) and any("bitsandbytes" in c for c in record["caveats"])
    json.dumps(record)


def test_vllm_log_gives_its_throughput_range_and_weights_memory(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text(
        "INFO 12-03 08:57:01 [gpu_model_runner.py:5150] Model loading took 0.2547 GiB memory and 1.2 seconds\n"
        "INFO [loggers.py:257] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 0.0 "
        "tokens/s, Running: 0 reqs, Waiting: 0 reqs\n"
        "INFO [loggers.py:257] Engine 000: Avg prompt throughput: 410.5 tokens/s, Avg generation throughput: 6.2 "
        "tokens/s, Running: 4 reqs, Waiting: 0 reqs\n"
        "INFO [loggers.py:257] Engine 000: Avg prompt throughput: 388.0 tokens/s, Avg generation throughput: 9.8 "
        "tokens/s, Running: 2 reqs, Waiting: 0 reqs\n"
        "INFO [loggers.py:257] Engine 000: Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 3.1 "
        "tokens/s, Running: 1 reqs, Waiting: 0 reqs\n")
    found = _logged_figures(str(log))
    assert found["weights_memory_bytes"] == int(0.2547 * 2**30)
    assert found["engine_reported"]["prompt_tokens_per_second"] == [388.0, 410.5]  # idle intervals left out
    assert found["engine_reported"]["output_tokens_per_second"] == [3.1, 9.8]  # decode-only intervals count here
    assert _logged_figures(str(tmp_path / "missing.log")) == {}


def test_peak_rss_and_weights_on_disk_are_read_from_the_system(tmp_path):
    status = read_proc_status()
    assert status["VmHWM"] >= status["VmRSS"] > 0
    assert weights_on_disk(tmp_path / "nope") == 0


@pytest.mark.model
def test_parameter_count_of_the_demo_model(demo_path):
    from longquant_checks.checkpoints.info import parameter_count

    assert parameter_count(demo_path) == 134_515_008  # SmolLM2-135M (tied embeddings stored once)
