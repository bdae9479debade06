"""The gate end to end on CUDA: the demo plan of fixtures/gpu.toml (vLLM reference; in-flight FP8, FP8 KV cache and
GPTQ int4 on vLLM; bitsandbytes NF4 on transformers), baselines made with --lq-update-baselines=missing, then the
same run again from the resume cache, which must give the same verdicts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from longquant_checks.plugin import plugin_args

REPO = Path(__file__).resolve().parents[2]
TEST_FILE = "def test_long_context(lq_cell):\n    lq_cell.check()\n"


def _config(tmp: Path) -> Path:
    data = tomllib.loads((REPO / "fixtures" / "gpu.toml").read_text())
    candidates = [c for c in data["candidates"] if c.get("recipe") != "gptq-w4a16"]
    carried = os.environ.get("LONGQUANT_GPU_GPTQ_W4A16")
    if carried:  # produced on CPU elsewhere (the GPU machine has no llmcompressor environment)
        candidates.append({"name": "gptq_w4a16", "source": carried})
    lines = ['reference = "demo"', f'engine = "{data["engine"]}"', 'device = "cuda"',
             f'tasks = {data["tasks"]!r}'.replace("'", '"'), f'buckets = {data["buckets"]!r}'.replace("'", '"'),
             f'languages = {data["languages"]!r}'.replace("'", '"'), f'samples = {data["samples"]}', "seed = 0",
             f'baseline_dir = "{tmp / "baselines"}"', f'results_dir = "{tmp / "results"}"']
    if "engine_args" in data:
        lines.append("engine_args = { " + ", ".join(f"{k} = {v!r}" for k, v in data["engine_args"].items()) + " }")
    for c in candidates:
        lines.append("\n[[candidates]]")
        for key, value in c.items():
            if isinstance(value, dict):
                lines.append(f"{key} = {{ " + ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in value.items()) + " }")
            else:
                lines.append(f"{key} = {value!r}".replace("'", '"'))
    path = tmp / "longquant.toml"
    path.write_text("\n".join(lines) + "\n")
    (tmp / "test_gate.py").write_text(TEST_FILE)
    return path


def _pytest(tmp: Path, *args: str) -> tuple[int, str]:
    """The inner gate run; its output goes to a log next to its results as it comes (a cut run keeps it)."""
    log = tmp / f"gate-{len(list(tmp.glob('gate-*.log')))}.log"
    with open(log, "w") as fh:
        code = subprocess.run([sys.executable, "-m", "pytest", *plugin_args(), str(tmp), "-q",
                               "-p", "no:cacheprovider", f"--rootdir={tmp}", *args], stdout=fh, stderr=subprocess.STDOUT,
                              cwd=tmp, env={k: v for k, v in os.environ.items() if k != "CI"}).returncode
    out = log.read_text()
    print(out[-6000:])
    return code, out


def _counts(out: str) -> dict[str, int]:
    last = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed)", line)][-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", last)}


def test_gpu_demo_gate_end_to_end(tmp_path):
    _config(tmp_path)
    code, first = _pytest(tmp_path, "--lq-update-baselines=missing")
    counts = _counts(first)
    assert code in (0, 1) and not counts.get("error") and not counts.get("errors"), first[-3000:]
    assert counts.get("passed", 0) >= 1
    # 8-bit in-flight FP8 weights pass every one of their cells on this plan.
    assert not re.search(r"FAILED \S*\[fp8-", first), first
    code2, again = _pytest(tmp_path)
    assert _counts(again) == counts and code2 == code  # the same verdicts, from the resume cache
