"""The demo model on CUDA: vLLM bf16, in-flight FP8, the FP8 KV cache, a compressed-tensors GPTQ int4 checkpoint on
vLLM's kernels, and bitsandbytes NF4 / LLM.int8 through transformers. Each answers the same 4K needle prompts;
the printed lines are the figures of docs/gpu.md."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from longquant_checks import Cell, get_task
from longquant_checks.engines import open_engine

N = 16
CELL = Cell("niah_single_2", 4096, "en")


@pytest.fixture(scope="module")
def batch(tok):
    return get_task(CELL.task).generate(CELL, tok, N, 0)


def _run(label, path, batch, minimum, kind="vllm", **settings):
    task = get_task(CELL.task)
    t0 = time.perf_counter()
    with open_engine(kind, str(path), device="cuda", **settings) as engine:
        start = time.perf_counter() - t0
        t1 = time.perf_counter()
        outputs = engine.generate(batch)
        seconds = time.perf_counter() - t1
        info = engine.info
    score = sum(task.score(s, o.text) for s, o in zip(batch, outputs)) / len(batch)
    print(f"\n[gpu] {label}: {kind} {info.version} start {start:.1f} s, {len(batch)} x 4K in {seconds:.2f} s, "
          f"score {score:.2f}")
    assert all(o.n_prompt_tokens == s.n_tokens for s, o in zip(batch, outputs))
    assert score >= minimum, [o.text for o in outputs[:4]]
    return info, outputs


def test_vllm_bf16_on_cuda(demo_path, batch):
    info, _ = _run("vLLM bf16", demo_path, batch, 0.75, max_model_len=8192)
    assert info.device == "cuda" and info.settings["dtype"] == "bfloat16"


def test_vllm_inflight_fp8(demo_path, batch):
    info, _ = _run("vLLM in-flight FP8", demo_path, batch, 0.6, recipe="fp8-inflight", max_model_len=8192)
    assert info.settings["quantization"] == "fp8"


def test_vllm_fp8_kv_cache(demo_path, batch):
    info, _ = _run("vLLM FP8 KV cache", demo_path, batch, 0.5, max_model_len=8192, kv_cache_dtype="fp8")
    assert info.settings["kv_cache_dtype"] == "fp8"


def _gptq_checkpoint(demo_path) -> Path:
    carried = os.environ.get("LONGQUANT_GPU_GPTQ_W4A16")
    if carried:
        return Path(carried)
    from longquant_checks.checkpoints.produce import CalibrationSpec, produce, quant_python

    try:
        quant_python()
    except Exception as exc:  # no llmcompressor environment on this machine
        pytest.skip(f"needs a gptq-w4a16 checkpoint: set LONGQUANT_GPU_GPTQ_W4A16 to one produced elsewhere ({exc})")
    return Path(produce(str(demo_path), "gptq-w4a16", CalibrationSpec(samples=8, tokens=256)))


def test_compressed_tensors_gptq_w4a16_on_vllm_cuda_kernels(demo_path, batch):
    path = _gptq_checkpoint(demo_path)
    config = (path / "config.json").read_text()
    assert "compressed-tensors" in config or "compressed_tensors" in config
    info, _ = _run("GPTQ W4A16 (compressed-tensors, produced on CPU)", path, batch, 0.25, max_model_len=8192)
    assert info.name == "vllm"


@pytest.mark.parametrize("recipe,minimum", [("bnb-nf4", 0.25), ("bnb-int8", 0.5)])
def test_bitsandbytes_through_transformers_on_cuda(demo_path, batch, recipe, minimum):
    info, _ = _run(f"transformers + bitsandbytes {recipe}", demo_path, batch, minimum, kind="hf", recipe=recipe,
                   batch_size=16, dtype="bfloat16")
    assert info.device.startswith("cuda") and info.settings["inflight"]["method"] == "bitsandbytes"
