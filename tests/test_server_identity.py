"""A remote OpenAI-compatible server's results belong to what it reports serving, and to the user's pin.

The server here is a loopback stub of GET /v1/models only (what the identity reads); generation through a real
vLLM server is tested in tests/test_engine_openai.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from longquant_checks import evaluate
from longquant_checks.checkpoints.resolve import ResolvedCheckpoint
from longquant_checks.engines.openai import describe_server
from longquant_checks.errors import EngineError
from longquant_checks.setups import EngineSetup


@pytest.fixture
def server():
    state = {"root": "/models/llama-w4a16-v1", "seen_auth": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            state["seen_auth"].append(self.headers.get("Authorization"))
            body = json.dumps({"object": "list", "data": [{
                "id": "llama", "object": "model", "created": __import__("time").time_ns(), "owned_by": "vllm",
                "root": state["root"], "max_model_len": 131072, "permission": [{"id": str(id(self))}]}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()


def identity(url, monkeypatch=None, nonce=None, **settings):
    if nonce and monkeypatch:
        monkeypatch.setattr(evaluate, "_RUN_NONCE", nonce)
    checkpoint = ResolvedCheckpoint("remote", "/tokenizer", "4-bit", "f" * 64)
    setup = EngineSetup("openai", "server", {"base_url": url, "served_model": "llama", **settings})
    return evaluate.CheckpointRunner(checkpoint, setup, store=None, book=None).engine_identity()


def test_server_report_is_stable_and_excludes_volatile_fields(server):
    first, second = describe_server(server["url"]), describe_server(server["url"])
    assert first == second == {"models": [{"id": "llama", "root": "/models/llama-w4a16-v1", "owned_by": "vllm",
                                           "max_model_len": 131072}]}


def test_redeployed_server_is_never_served_from_the_cache_unless_pinned(server, monkeypatch):
    unpinned_a = identity(server["url"], monkeypatch, nonce="run-a")
    unpinned_b = identity(server["url"], monkeypatch, nonce="run-b")
    assert unpinned_a != unpinned_b  # two runs never share an unpinned server's results
    pinned_a = identity(server["url"], monkeypatch, nonce="run-a", pin="deploy-2026-12-01")
    pinned_b = identity(server["url"], monkeypatch, nonce="run-b", pin="deploy-2026-12-01")
    assert pinned_a == pinned_b  # the user says it is the same deployment: reused
    server["root"] = "/models/llama-w4a16-v2"  # redeployed with other weights, same URL and model name
    assert identity(server["url"], pin="deploy-2026-12-01") != pinned_a  # what it reports is part of it


def test_api_key_is_sent_but_never_recorded(server, monkeypatch):
    monkeypatch.setenv("LQ_TEST_KEY", "sk-secret-123")
    ident = identity(server["url"], api_key_env="LQ_TEST_KEY", pin="p")
    assert server["seen_auth"][-1] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in json.dumps(ident)


def test_server_down_is_a_clear_error():
    with pytest.raises(EngineError, match="cannot list its models.*is the server up"):
        describe_server("http://127.0.0.1:9/v1", timeout=2)
