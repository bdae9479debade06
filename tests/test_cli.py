"""The `longquant` command, run as a user runs it."""

import subprocess
import sys


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "longquant_checks.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_demo_summarizes_cells_tokens_and_a_sample_prompt(tmp_path, monkeypatch, demo_path):
    import os

    env = {**os.environ, "LONGQUANT_CACHE": str(tmp_path), "COLUMNS": "160"}
    # The demo checkpoint itself is reused from the session cache through a symlinked models folder.
    (tmp_path / "models").symlink_to(demo_path.parent)
    out = run("suite", "--model", "demo", "--tasks", "niah_single_1,cwe", "--buckets", "1K,16K", "--languages", "en,ta", "-n", "2", env=env)
    assert out.returncode == 0, out.stderr + out.stdout
    text = " ".join(out.stdout.split())  # rich wraps lines at the terminal width
    assert "4 cells x 2 samples" in text and "4 cells skipped" in text and "exceeds the model's max length 8192" in text
    assert "niah_single_1" in text and "cwe" in text
    assert "8 samples (8 built, 0 from cache)" in text
    assert "sample prompt niah_single_1-1K-en-s0-0000" in text and "special magic number" in text
    again = run("suite", "--model", "demo", "--tasks", "niah_single_1,cwe", "--buckets", "1K", "--languages", "en,ta", "-n", "2", env=env)
    assert "8 samples (0 built, 8 from cache)" in " ".join(again.stdout.split())


def test_bad_values_exit_2_with_one_clear_line():
    out = run("suite", "--model", "demo", "--tasks", "niah_single_7")
    assert out.returncode == 2
    assert "unknown task 'niah_single_7'; accepted: niah_single_1" in " ".join(out.stdout.split())
    out = run("suite", "--model", "demo", "--languages", "xx")
    assert out.returncode == 2 and "unknown language 'xx'" in " ".join(out.stdout.split())
    out = run("suite", "--model", "/nonexistent/model")
    assert out.returncode == 2 and "cannot load a tokenizer from '/nonexistent/model'" in " ".join(out.stdout.split())


def test_lists():
    assert "kv_recall" in run("tasks").stdout
    out = run("languages")
    assert out.returncode == 0 and "Tamil" in out.stdout and "rtl" in out.stdout
