"""vLLM offline engine: a checkpoint's samples as one stream of token-id prompts, greedy, continuously batched.

The stream keeps at most `max_tokens_in_flight` prompt tokens submitted and unanswered (the plan is read lazily,
so host memory is bounded by what is in flight, not by the plan) and reports each answer as it finishes, so the
caller can save a cell the moment its last sample is done.

vLLM does not reliably free memory when an `LLM` is deleted, and a crash or OOM in it can take the process down,
so by default the engine lives in its own worker process (spawned, as vLLM's CPU platform requires);
`in_process=True` keeps it in this one (no isolation). To cut the worker's start, a spare worker that has already
imported vLLM is kept ready (`prewarm`, default on CUDA): the next checkpoint's engine starts in it while the
previous checkpoint is still generating or being scored.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import re
import queue
import signal
import tempfile
import threading
import time
import traceback
import weakref
from typing import Any, Iterable, Iterator

import numpy as np

from ..divergence import TokenTrace, forced_from_topk
from ..errors import EngineError
from ..schema import Sample
from .base import Engine, EngineInfo, Output, Scoring, cpu_dtype


# LLM(...) arguments we pass on; the engine's other settings are ours. Both lists are in setups.ENGINE_SETTINGS,
# which refuses any other key before the engine starts.
_LLM_ARGS = ("max_model_len", "dtype", "kv_cache_dtype", "quantization", "tensor_parallel_size",
             "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend",
             "gpu_memory_utilization", "enable_prefix_caching", "enforce_eager", "seed", "trust_remote_code",
             "hf_overrides")
DEFAULT_TOKENS_IN_FLIGHT = 8_000_000  # ~32 MB of uint32 prompts here; vLLM's scheduler decides what runs


def llm_arguments(settings: dict[str, Any]) -> dict[str, Any]:
    """What `LLM(...)` receives of the engine's (resolved) settings."""
    return {k: settings[k] for k in _LLM_ARGS if settings.get(k) is not None}


def cpu_env(settings: dict[str, Any]) -> dict[str, str]:
    # Without an explicit KV space vLLM sizes it from a share of NUMA node 0 and may refuse to start;
    # its default thread binding leaves one of two cores idle.
    # A step of emulated kernels (FP8 on CPU) on a busy machine can outlast vLLM's 300 s RPC timeout without hanging.
    return {"VLLM_CPU_KVCACHE_SPACE": str(settings.get("kv_cache_space_gib", 4)),
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{max(0, (os.cpu_count() or 1) - 1)}",
            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600"}


def _prepare_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        os.environ.setdefault(key, value)


class _Runner:
    """The vLLM objects; lives in the worker process (or in this one when in_process)."""

    def __init__(self, model_path: str, settings: dict[str, Any]):
        if settings.get("device", "cpu") == "cpu":
            _prepare_env(cpu_env(settings))
        import vllm

        self.vllm = vllm
        # Stats on: vLLM then logs its own prompt and generation throughput every 10 s (read back by `resources`).
        self.llm = vllm.LLM(model=model_path, **{"disable_log_stats": False, **llm_arguments(settings)})
        self.engine = self.llm.llm_engine
        self.max_model_len = self.engine.model_config.max_model_len
        self.version = vllm.__version__
        self._parts: dict[int, dict[str, Any]] = {}  # position -> its requests' results until all are in

    def add(self, prompts: list[tuple]) -> None:
        """Submit (position, prompt token ids, max new tokens[, scoring]); the request id is the position. Scoring
        (a dict): "top_k" asks for the answer's own top-k log-probabilities (a trace); "forced" (the reference's
        answer ids, with "k") adds a second request, prompt + that answer, for its prompt log-probabilities: the
        candidate's top-k at each answer position, which always hold the answer's own token."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        for position, ids, max_tokens, *rest in prompts:
            scoring = rest[0] if rest else None
            top_k = (scoring or {}).get("top_k") or None
            # FINAL_ONLY, as LLM.generate does: otherwise each step builds an output (text so far) per running request.
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens, output_kind=RequestOutputKind.FINAL_ONLY,
                                    logprobs=top_k)
            self.engine.add_request(str(position), TokensPrompt(prompt_token_ids=ids.tolist()), params)
            self._parts[position] = {"left": 1, "n_prompt": len(ids)}
            if scoring and scoring.get("forced") is not None:
                # The request generates one token, so prompt + answer must leave room for it within max_model_len:
                # where the answer ran to its budget in a bucket as long as the model, its last token goes unscored.
                room = self.max_model_len - 1 - len(ids)
                if room < 1:
                    raise ValueError(f"prompt of {len(ids)} tokens leaves no room to score an answer within "
                                     f"max_model_len {self.max_model_len}")
                forced = list(scoring["forced"])[:room]
                params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=int(scoring.get("k", 20)),
                                        detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
                self.engine.add_request(f"{position}.f", TokensPrompt(prompt_token_ids=ids.tolist() + forced), params)
                self._parts[position].update(left=2, forced_len=len(forced))

    def busy(self) -> bool:
        return self.engine.has_unfinished_requests()

    def step(self) -> list[tuple]:
        """One engine step; the samples it finished (every request of theirs) as (position, text, output tokens,
        finish reason, scoring payload or None)."""
        done = []
        for out in self.engine.step():
            if not out.finished:
                continue
            # vLLM may append a suffix of its own to the id it was given (newer versions do).
            head = str(out.request_id).split("-")[0]
            position = int(head.removesuffix(".f"))
            part = self._parts[position]
            if head.endswith(".f"):
                rows = (out.prompt_logprobs or [])[part["n_prompt"]:part["n_prompt"] + part["forced_len"]]
                part["forced"] = [{int(t): float(lp.logprob) for t, lp in row.items()} for row in rows]
            else:
                first = out.outputs[0]
                part["answer"] = (first.text, len(first.token_ids), first.finish_reason or "")
                if first.logprobs is not None:
                    part["trace"] = (list(first.token_ids),
                                     [{int(t): float(lp.logprob) for t, lp in row.items()} for row in first.logprobs])
            part["left"] -= 1
            if part["left"] == 0:
                del self._parts[position]
                payload = {k: part[k] for k in ("trace", "forced") if k in part} or None
                done.append((position, *part["answer"], payload))
        return done

    def stats(self) -> dict[str, Any]:
        """The KV-cache bytes per token of this engine's cache (its dtype and the model's KV heads, as vLLM configured
        them), and on CUDA the device's memory in use. Read defensively: these are vLLM internals."""
        out: dict[str, Any] = {}
        try:
            config = self.engine.vllm_config
            model, cache, parallel = config.model_config, config.cache_config, config.parallel_config
            dtype = cache.cache_dtype if cache.cache_dtype != "auto" else str(model.dtype).removeprefix("torch.")
            element = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 1 if "fp8" in dtype else None)
            if element:
                layers = model.get_num_layers(parallel)
                out["kv_cache_bytes_per_token"] = 2 * layers * model.get_num_kv_heads(parallel) * \
                    model.get_head_size() * element
                out["kv_cache_note"] = (f"vLLM's cache layout: 2 x {layers} layers x KV heads x head size x {dtype} "
                                        "bytes per token")
            blocks = getattr(cache, "num_gpu_blocks", None)
            if blocks:
                out["engine_reported"] = {"kv_cache_tokens": int(blocks) * int(cache.block_size)}
        except Exception as exc:  # another vLLM version: the figure is missing, with the reason
            out["caveats"] = [f"vLLM's cache layout could not be read ({type(exc).__name__}: {exc})"]
        if str(self.engine.vllm_config.device_config.device).startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info()
            out.update(peak_memory_bytes=int(total - free), memory_kind="cuda",
                       memory_note="GPU memory in use on the device at the end of the stream: vLLM reserves "
                                   "gpu_memory_utilization of it (weights and the whole KV-cache pool) up front")
        return out

    def close(self) -> None:
        try:
            self.engine.engine_core.shutdown()
        except Exception:  # already gone, or an in-process core without shutdown
            pass
        del self.llm, self.engine


def _worker(conn, log_path: str | None = None, env: dict[str, str] | None = None) -> None:
    """A worker process: loads one model and serves it. A spare (`env` given) imports vLLM at once, with the
    environment vLLM reads at import, so that part of a start is done before the engine is needed. It leads a process
    group of its own, so closing it also stops the processes vLLM starts (an engine core left behind kept computing
    at full CPU after its parent died)."""
    os.setsid()
    if log_path:  # the worker's (and vLLM's own processes') output, so a crash can be explained by its last lines
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
    if env is not None:
        _prepare_env(env)
        try:
            import vllm  # noqa: F401
        except BaseException:
            pass  # reported by the load below, with vLLM's own words
    command, payload = conn.recv()
    if command != "load":
        return
    try:
        runner = _Runner(*payload)
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
        if command == "stats":
            try:
                conn.send(("stats", runner.stats()))
            except BaseException:
                conn.send(("error", traceback.format_exc()))
        if command == "stream":
            try:
                _serve_stream(conn, runner)
            except BaseException:
                conn.send(("error", traceback.format_exc()))


def _serve_stream(conn, runner: _Runner) -> None:
    """Until "end" and every request answered: take new prompts as they come, step, send what finished. A reader
    thread takes the parent's prompts, so neither side can block the other with a large message."""
    inbox: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            message = conn.recv()
            inbox.put(message)
            if message[0] == "end":
                return

    threading.Thread(target=read, daemon=True).start()
    ended = False
    while True:
        while not inbox.empty() or not (runner.busy() or ended):
            command, payload = inbox.get()
            if command == "add":
                runner.add(payload)
            elif command == "end":
                ended = True
        if runner.busy():
            done = runner.step()
            if done:
                conn.send(("done", done))
        elif ended:
            conn.send(("end", None))
            return


class _Process:
    """A spawned worker process with its pipe and log file."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.env = env
        self.conn, child = ctx.Pipe()
        fd, self.log = tempfile.mkstemp(prefix="longquant-vllm-worker-", suffix=".log")
        os.close(fd)
        # Not a daemon: vLLM starts processes of its own.
        self.proc = ctx.Process(target=_worker, args=(child, self.log, env), daemon=False)
        self.proc.start()
        child.close()
        _LIVE.add(self)

    def kill(self) -> None:
        """The worker and every process vLLM started under it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        # SIGKILL is delivered at once, but a process holding a model exits only once its memory is released: wait
        # (bounded) for the group to be gone, so the next engine does not start beside the dying one's memory.
        deadline = time.monotonic() + 30
        while _group_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`; [] where /proc cannot tell (not Linux)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()  # state, ppid, pgrp, ...
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry))
    return found


_spare: _Process | None = None
_LIVE: "weakref.WeakSet[_Process]" = weakref.WeakSet()


def _spare_env(settings: dict[str, Any]) -> dict[str, str]:
    return cpu_env(settings) if settings.get("device") == "cpu" else {}


def _take_worker(settings: dict[str, Any]) -> tuple[_Process, bool]:
    """The spare worker if one is alive and was prepared for these settings (True: prewarmed), else a new one."""
    global _spare
    spare, _spare = _spare, None
    if spare is not None and spare.proc.is_alive() and spare.env == _spare_env(settings):
        return spare, True
    if spare is not None:
        spare.kill()
    return _Process(), False


def _keep_spare(settings: dict[str, Any]) -> None:
    global _spare
    if _spare is None or not _spare.proc.is_alive():
        _spare = _Process(_spare_env(settings))


@atexit.register
def _stop_workers() -> None:
    """At exit, no worker outlives us (multiprocessing would otherwise wait forever for a non-daemon one): the
    spare is told to return, and any worker still alive is killed with its process group."""
    global _spare
    if _spare is not None:
        try:
            _spare.conn.send(("exit", None))  # anything but "load": the spare returns
            _spare.proc.join(5)
        except (OSError, EOFError):
            pass
        _spare = None
    for worker in list(_LIVE):
        worker.kill()


def resolve_settings(device: str, settings: dict[str, Any], inflight: dict | None = None,
                     kv_cache_space_gib: float = 4) -> dict[str, Any]:
    """The engine's settings with its defaults filled in; `llm_arguments` of them is what `LLM(...)` receives."""
    settings = {"dtype": "bfloat16" if device.startswith("cuda") else cpu_dtype(), "enable_prefix_caching": False,
                "seed": 0, **settings, "device": device}
    if device == "cpu":
        settings["kv_cache_space_gib"] = kv_cache_space_gib
        settings.setdefault("enforce_eager", True)  # CPU: compile takes minutes at each start
    if inflight:
        if inflight.get("method") != "vllm":
            raise EngineError(f"vLLM cannot apply the in-flight recipe {inflight}")
        settings["quantization"] = inflight["quantization"]
    return settings


class VLLMEngine(Engine):
    divergence_unavailable = None  # its top-k log-probabilities (the candidate side bounded: divergence.py)

    def __init__(self, model_path: str, device: str = "cpu", in_process: bool = False, start_timeout: float = 900,
                 inflight: dict | None = None, kv_cache_space_gib: float = 4, prewarm: bool | None = None,
                 max_tokens_in_flight: int = DEFAULT_TOKENS_IN_FLIGHT, **settings: Any):
        from ..setups import check_settings

        check_settings("vllm", {k: v for k, v in settings.items() if k != "trust_remote_code"},
                       f"vLLM engine for {model_path}")
        if max_tokens_in_flight < 1:
            raise EngineError(f"max_tokens_in_flight must be at least 1, not {max_tokens_in_flight}")
        settings = resolve_settings(device, settings, inflight, kv_cache_space_gib)
        self.model_path, self.settings, self.in_process = model_path, settings, in_process
        self.max_tokens_in_flight = max_tokens_in_flight
        self.prewarmed = False  # whether this engine started in a spare worker that had already imported vLLM
        self._runner: _Runner | None = None
        self._worker: _Process | None = None
        self._closed_worker: _Process | None = None
        t0 = time.perf_counter()
        if in_process:
            self._runner = _Runner(model_path, settings)
            ready = {"max_model_len": self._runner.max_model_len, "version": self._runner.version}
        else:
            self._worker, self.prewarmed = _take_worker(settings)
            self._worker.conn.send(("load", (model_path, settings)))
            try:
                _, ready = self._receive("ready", start_timeout, "start")
            except BaseException:
                self.close()
                raise
            if device.startswith("cuda") if prewarm is None else prewarm:
                _keep_spare(settings)  # imports vLLM while this engine generates: the next start skips that
        self.start_seconds = time.perf_counter() - t0
        self.max_model_len = ready["max_model_len"]
        self.info = EngineInfo("vllm", ready["version"], {k: v for k, v in settings.items() if k != "device"}, device)

    @property
    def _proc(self):
        return self._worker.proc if self._worker else None

    def _receive(self, expected: str, timeout: float, what: str) -> Any:
        assert self._worker is not None
        conn, proc = self._worker.conn, self._worker.proc
        deadline = time.monotonic() + timeout
        while not conn.poll(1.0):
            if not proc.is_alive():
                raise self._died(what)
            if time.monotonic() > deadline:
                self._worker.kill()
                raise EngineError(f"vLLM worker for {self.model_path}: {what} took over {timeout:.0f} s")
        try:
            status, payload = conn.recv()
        except (OSError, EOFError):
            proc.join(5)
            raise self._died(what) from None
        if status == "error":
            self.close()
            # vLLM's own processes often report only "see root cause above": that cause is in the worker's log.
            raise EngineError(f"vLLM failed during {what} of {self.model_path}:\n{payload.strip().splitlines()[-1]}\n"
                              f"(full traceback:\n{payload})\nthe worker's last log lines:\n{self.log_tail()}")
        if status != expected and not (expected == "done" and status == "end"):
            raise EngineError(f"vLLM worker for {self.model_path}: expected {expected!r}, got {status!r}")
        return status, payload

    def _died(self, what: str) -> EngineError:
        proc = self._worker.proc
        code = proc.exitcode
        # Only a SIGKILL (what the kernel's out-of-memory killer sends) or the log may suggest memory.
        tail = self.log_tail()
        hint = ("; killed by SIGKILL, as the out-of-memory killer does" if code == -9
                else "; the log reports out of memory" if "out of memory" in tail.lower() else "")
        return EngineError(f"vLLM worker for {self.model_path} died during {what} (exit code {code}{hint}); "
                           f"its last log lines:\n{tail}")

    def _send(self, message: tuple, what: str) -> None:
        try:
            self._worker.conn.send(message)
        except (OSError, EOFError):  # the worker is gone: say how it died
            self._worker.proc.join(5)
            raise self._died(what) from None

    def log_tail(self, lines: int = 15) -> str:
        worker = self._worker or self._closed_worker
        log = worker.log if worker else None
        try:
            text = open(log, encoding="utf-8", errors="replace").read() if log else ""
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        worker, self._worker = self._worker, None
        if worker is not None and worker.proc.is_alive():
            try:
                worker.conn.send(("close", None))
                if worker.conn.poll(60):
                    worker.conn.recv()
            except (OSError, EOFError):
                pass
            worker.proc.join(30)
        if worker is not None:
            worker.kill()  # the whole group: vLLM's own processes too, even when the worker itself died first
        self._closed_worker = worker  # its log stays readable for an error message

    def resources(self) -> dict[str, Any]:
        """The runner's figures; on CPU, the peak RSS summed over the worker's process group (the worker and the
        engine core vLLM starts), read from /proc."""
        from ..meter import read_proc_status

        if self._runner is not None:
            out = self._runner.stats()
            members = ["self"]
        elif self._worker is not None:
            self._send(("stats", None), "stats")
            _, out = self._receive("stats", 60, "stats")
            members = _group_members(self._worker.proc.pid)
        else:
            return {}
        log = (self._worker.log if self._worker else None)
        logged = _logged_figures(log)
        if logged.get("engine_reported"):
            out.setdefault("engine_reported", {}).update(logged["engine_reported"])
        if logged.get("weights_memory_bytes"):
            out["weights_memory_bytes"] = logged["weights_memory_bytes"]
        if "peak_memory_bytes" not in out and members:
            peaks = [read_proc_status(pid).get("VmHWM", 0) for pid in members]
            out.update(peak_memory_bytes=sum(peaks) or None, memory_kind="rss",
                       memory_note=f"peak resident memory summed over vLLM's {len(members)} processes (worker, engine "
                                   "core); the KV-cache pool (kv_cache_space_gib) is reserved up front")
        return out

    def stream(self, samples: Iterable[Sample], scoring: Scoring | None = None) -> Iterator[tuple[int, Output]]:
        """Answers as they finish. Each output's `seconds` is its share of the wall time between two reports (the
        shares add up to the stream's wall time: a per-sample cost, not a latency). `scoring`: the answer's trace
        from vLLM's own top-k log-probabilities; a forced reference answer as a second request for its prompt
        log-probabilities (prompt + answer: the candidate side, top-k only, so KL is bounded, divergence.py)."""
        feed = _Feed(samples, self.max_tokens_in_flight, scoring)
        last = time.perf_counter()
        if self._runner is not None:
            runner = self._runner
            while True:
                for batch in feed.take():
                    runner.add(batch)
                if not runner.busy():
                    break
                done = runner.step()
                if done:
                    now = time.perf_counter()
                    yield from feed.answered(done, (now - last) / len(done))
                    last = now
            return
        if self._worker is None:
            raise EngineError("the vLLM engine is closed")
        self._send(("stream", None), "generation")
        while True:
            for batch in feed.take():
                self._send(("add", batch), "generation")
            if feed.exhausted and not feed.end_sent:
                self._send(("end", None), "generation")
                feed.end_sent = True
            status, done = self._receive("done", 24 * 3600, "generation")
            if status == "end":
                return
            now = time.perf_counter()
            yield from feed.answered(done, (now - last) / len(done))
            last = now


_THROUGHPUT = re.compile(r"Avg prompt throughput: ([0-9.]+) tokens/s, Avg generation throughput: ([0-9.]+) tokens/s")
_MODEL_MEMORY = re.compile(r"Model loading took ([0-9.]+) GiB memory")


def _logged_figures(log: str | None) -> dict[str, Any]:
    """From a worker's log: the range of vLLM's own logged throughput (10-second averages while it was busy; a
    shorter stream logs none) and the memory its weights took as it reported it at load."""
    try:
        text = open(str(log), encoding="utf-8", errors="replace").read() if log else ""
    except OSError:
        return {}
    out: dict[str, Any] = {}
    loaded = [float(x) for x in _MODEL_MEMORY.findall(text)]
    if loaded and loaded[-1] > 0:
        out["weights_memory_bytes"] = int(loaded[-1] * 2**30)
    pairs = [(float(a), float(b)) for a, b in _THROUGHPUT.findall(text)]
    # Each range over the intervals that did that work (an interval of decode only says nothing of prefill speed).
    prompt, output = [a for a, _ in pairs if a > 0], [b for _, b in pairs if b > 0]
    if prompt or output:
        out["engine_reported"] = {"source": "vLLM's log: average throughput per 10-second interval",
                                  "intervals": sum(1 for a, b in pairs if a > 0 or b > 0)}
        if prompt:
            out["engine_reported"]["prompt_tokens_per_second"] = [min(prompt), max(prompt)]
        if output:
            out["engine_reported"]["output_tokens_per_second"] = [min(output), max(output)]
    return out


class _Feed:
    """The lazily read plan: hands out prompts while fewer than `budget` prompt tokens are unanswered."""

    def __init__(self, samples: Iterable[Sample], budget: int, scoring: Scoring | None = None):
        self.scoring = scoring or Scoring()
        self._it = enumerate(samples)
        self.budget = budget
        self.in_flight: dict[int, Sample] = {}
        self.tokens = 0
        self.exhausted = False
        self.end_sent = False

    def take(self, chunk: int = 256) -> Iterator[list[tuple[int, np.ndarray, int]]]:
        batch: list[tuple[int, np.ndarray, int]] = []
        # Always at least one prompt in flight, however long (a single sample over the budget still runs).
        while not self.exhausted and (self.tokens < self.budget or not self.in_flight):
            nxt = next(self._it, None)
            if nxt is None:
                self.exhausted = True
                break
            position, sample = nxt
            self.in_flight[position] = sample
            self.tokens += sample.n_tokens
            batch.append((position, np.asarray(sample.prompt_token_ids, dtype=np.uint32), sample.max_new_tokens,
                          self._scoring_of(sample)))
            if len(batch) >= chunk:
                yield batch
                batch = []
        if batch:
            yield batch

    def _scoring_of(self, sample: Sample) -> dict | None:
        trace = self.scoring.forced.get(sample.id)
        if trace is not None:
            return {"top_k": self.scoring.top_k or None, "forced": trace.ids.tolist(), "k": max(trace.k, 1)}
        return {"top_k": self.scoring.top_k} if self.scoring.top_k else None

    def answered(self, done: list[tuple], seconds: float) -> Iterator[tuple[int, Output]]:
        for position, text, n_out, finish, *rest in done:
            sample = self.in_flight.pop(position)
            self.tokens -= sample.n_tokens
            payload = rest[0] if rest else None
            trace = forced = None
            if payload and payload.get("trace") is not None:
                trace = _trace(*payload["trace"], self.scoring.top_k)
            if payload and payload.get("forced") is not None:
                forced = forced_from_topk(self.scoring.forced[sample.id], payload["forced"])
            yield position, Output(sample.id, text, sample.n_tokens, n_out, seconds, finish, trace=trace, forced=forced)


def _trace(ids: list[int], rows: list[dict[int, float]], k: int) -> TokenTrace:
    """A generated answer's trace from vLLM's per-token top-k (each row also holds the token it chose)."""
    top_ids = np.zeros((len(ids), k), np.int64)
    top_lps = np.full((len(ids), k), -1e4, np.float32)  # a row shorter than k (a tiny vocabulary) pads with ~0 mass
    chosen = np.zeros(len(ids), np.float32)
    for t, (tok, row) in enumerate(zip(ids, rows)):
        best = sorted(row.items(), key=lambda item: (-item[1], item[0]))[:k]
        top_ids[t, :len(best)] = [b[0] for b in best]
        top_lps[t, :len(best)] = [b[1] for b in best]
        chosen[t] = row[tok]
    return TokenTrace(ids, chosen, top_ids, top_lps)
