"""vLLM offline engine: a whole cell as one batch of token-id prompts, greedy.

vLLM does not reliably free memory when an `LLM` is deleted, and a crash or OOM in it can take the
process down, so by default the engine lives in its own worker process (spawned, as vLLM's CPU
platform requires); `in_process=True` keeps it in this one (faster start, no isolation).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import traceback
from typing import Any, Sequence

from ..errors import EngineError
from ..schema import Sample
from .base import EngineInfo, Output, cpu_dtype


# LLM(...) arguments we pass on; the engine's other settings are ours. Both lists are in setups.ENGINE_SETTINGS,
# which refuses any other key before the engine starts.
_LLM_ARGS = ("max_model_len", "dtype", "kv_cache_dtype", "quantization", "tensor_parallel_size",
             "pipeline_parallel_size", "distributed_executor_backend", "gpu_memory_utilization",
             "enable_prefix_caching", "enforce_eager", "seed", "trust_remote_code", "hf_overrides")


def _llm_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in _LLM_ARGS if settings.get(k) is not None}


def _prepare_cpu_env(settings: dict[str, Any]) -> None:
    # Without an explicit KV space vLLM sizes it from a share of NUMA node 0 and may refuse to start;
    # its default thread binding leaves one of two cores idle.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.get("kv_cache_space_gib", 4)))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")


class _Runner:
    """The vLLM objects; lives in the worker process (or in this one when in_process)."""

    def __init__(self, model_path: str, settings: dict[str, Any]):
        if settings.get("device", "cpu") == "cpu":
            _prepare_cpu_env(settings)
        import vllm

        self.vllm = vllm
        self.llm = vllm.LLM(model=model_path, **_llm_kwargs(settings))
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.version = vllm.__version__

    def generate(self, prompts: list[tuple[list[int], int]]) -> list[tuple[str, int, str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(temperature=0.0, max_tokens=m) for _, m in prompts]
        results = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _ in prompts], params,
                                    use_tqdm=False)
        return [(r.outputs[0].text, len(r.outputs[0].token_ids), r.outputs[0].finish_reason or "") for r in results]

    def close(self) -> None:
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # already gone, or an in-process core without shutdown
            pass
        del self.llm


def _worker(conn, model_path: str, settings: dict[str, Any], log_path: str | None = None) -> None:
    if log_path:  # the worker's (and vLLM's own processes') output, so a crash can be explained by its last lines
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
    try:
        runner = _Runner(model_path, settings)
        conn.send(("ready", {"max_model_len": runner.max_model_len, "version": runner.version}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        command, payload = conn.recv()
        if command == "close":
            runner.close()
            conn.send(("closed", None))
            return
        try:
            conn.send(("ok", runner.generate(payload)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


class VLLMEngine:
    def __init__(self, model_path: str, device: str = "cpu", in_process: bool = False, start_timeout: float = 900,
                 inflight: dict | None = None, kv_cache_space_gib: float = 4, **settings: Any):
        from ..setups import check_settings

        check_settings("vllm", {k: v for k, v in settings.items() if k != "trust_remote_code"},
                       f"vLLM engine for {model_path}")
        settings = {"dtype": "bfloat16" if device.startswith("cuda") else cpu_dtype(), "enable_prefix_caching": False, "seed": 0, **settings, "device": device}
        if device == "cpu":
            settings["kv_cache_space_gib"] = kv_cache_space_gib
            settings.setdefault("enforce_eager", True)  # CPU: compile takes minutes at each start
        if inflight:
            if inflight.get("method") != "vllm":
                raise EngineError(f"vLLM cannot apply the in-flight recipe {inflight}")
            settings["quantization"] = inflight["quantization"]
        self.model_path, self.settings, self.in_process = model_path, settings, in_process
        self._runner: _Runner | None = None
        self._proc = None
        self._conn = None
        self._log: str | None = None
        if in_process:
            self._runner = _Runner(model_path, settings)
            ready = {"max_model_len": self._runner.max_model_len, "version": self._runner.version}
        else:
            ctx = multiprocessing.get_context("spawn")
            self._conn, child = ctx.Pipe()
            fd, self._log = tempfile.mkstemp(prefix="longquant-vllm-worker-", suffix=".log")
            os.close(fd)
            # Not a daemon: vLLM starts processes of its own.
            self._proc = ctx.Process(target=_worker, args=(child, model_path, settings, self._log), daemon=False)
            self._proc.start()
            ready = self._receive("ready", start_timeout, "start")
        self.max_model_len = ready["max_model_len"]
        self.info = EngineInfo("vllm", ready["version"], {k: v for k, v in settings.items() if k != "device"}, device)

    def _receive(self, expected: str, timeout: float, what: str) -> Any:
        assert self._conn is not None and self._proc is not None
        deadline = time.monotonic() + timeout
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                code = self._proc.exitcode
                # Only a SIGKILL (what the kernel's out-of-memory killer sends) or the log may suggest memory.
                tail = self.log_tail()
                hint = ("; killed by SIGKILL, as the out-of-memory killer does" if code == -9
                        else "; the log reports out of memory" if "out of memory" in tail.lower() else "")
                raise EngineError(f"vLLM worker for {self.model_path} died during {what} (exit code {code}{hint}); "
                                  f"its last log lines:\n{tail}")
            if time.monotonic() > deadline:
                self._proc.kill()
                raise EngineError(f"vLLM worker for {self.model_path}: {what} took over {timeout:.0f} s")
        status, payload = self._conn.recv()
        if status == "error":
            self.close()
            # vLLM's own processes often report only "see root cause above": that cause is in the worker's log.
            raise EngineError(f"vLLM failed during {what} of {self.model_path}:\n{payload.strip().splitlines()[-1]}\n"
                              f"(full traceback:\n{payload})\nthe worker's last log lines:\n{self.log_tail()}")
        return payload

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = open(self._log, encoding="utf-8", errors="replace").read() if self._log else ""
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(("close", None))
                if self._conn.poll(60):
                    self._conn.recv()
            except (OSError, EOFError):
                pass
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(10)
        self._proc = None

    def generate(self, samples: Sequence[Sample], max_new_tokens: int | None = None) -> list[Output]:
        prompts = [(list(s.prompt_token_ids), max_new_tokens or s.max_new_tokens) for s in samples]
        t0 = time.perf_counter()
        if self._runner is not None:
            results = self._runner.generate(prompts)
        else:
            if self._proc is None:
                raise EngineError("the vLLM engine is closed")
            self._conn.send(("generate", prompts))
            results = self._receive("ok", 24 * 3600, "generation")
        per_sample = (time.perf_counter() - t0) / max(len(samples), 1)
        return [Output(s.id, text, s.n_tokens, n_out, per_sample, finish)
                for s, (text, n_out, finish) in zip(samples, results)]
