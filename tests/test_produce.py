"""llmcompressor recipes run in their own environment, produce a cached checkpoint that vLLM loads."""

import os
import subprocess
import sys

import pytest

from longquant_checks import Cell, get_task
from longquant_checks.checkpoints.produce import CalibrationSpec, QuantizeError, group_size_for, produce, quant_python
from longquant_checks.checkpoints.spec import infer_precision, read_config
from longquant_checks.engines import open_engine

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def quantizer():
    try:
        return quant_python()
    except QuantizeError:
        if os.environ.get("CI") == "true":
            raise  # CI must create the quantizer environment and run these for real
        pytest.skip("no llmcompressor environment (LONGQUANT_QUANT_PYTHON or .venv-quant)")


def test_group_size_divides_every_linear_input(demo_path):
    assert group_size_for(demo_path) == 64  # hidden 576 = 9 x 64: the usual 128 does not divide it


def test_fp8_dynamic_is_produced_once_cached_and_answers(quantizer, demo_path, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path))
    # Two producers at once (as two xdist workers would): one valid entry.
    code = ("import sys; from longquant_checks.checkpoints.produce import produce; "
            f"print(produce({str(demo_path)!r}, 'fp8-dynamic'))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = {p.communicate(timeout=900)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(paths) == 1
    path = produce(demo_path, "fp8-dynamic")  # the cache answers without running the quantizer
    entries = [p for p in path.parent.iterdir() if p.is_dir() and "fp8-dynamic" in p.name]
    assert str(path) in paths and entries == [path]  # no leftover temporary folders either
    config = read_config(path)
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert infer_precision(config) == "8-bit"
    # Answered through transformers (decompressed): vLLM's CPU build emulates FP8 matmuls, over 5 minutes for two
    # 1K prompts on 2 cores (one run outlasted vLLM's 300 s step timeout). vLLM's compressed-tensors kernels are
    # tested on CUDA (tests/gpu/test_cuda_engines.py).
    task = get_task("niah_single_1")
    samples = task.generate(Cell("niah_single_1", 1024, "en"), tok, 2, 0)
    with open_engine("hf", str(path), batch_size=2) as engine:
        outputs = engine.generate(samples)
    assert sum(task.score(s, o.text) for s, o in zip(samples, outputs)) >= 1


@pytest.mark.parametrize("recipe,bits", [("w8a8-int8", 8), ("gptq-w8a16", 8), ("gptq-w4a16", 4), ("awq-w4a16", 4)])
def test_every_calibrated_recipe_produces_a_checkpoint_that_answers(quantizer, demo_path, tok, tmp_path,
                                                                    monkeypatch, recipe, bits):
    """Tiny local calibration (4 x 128 tokens) keeps this fast; AWQ runs on a CPU-only torch via the worker's
    pin_memory workaround. Each result loads in transformers (decompressed on CPU) and still answers."""
    monkeypatch.setenv("LONGQUANT_CACHE", str(tmp_path))
    path = produce(demo_path, recipe, CalibrationSpec(samples=4, tokens=128))
    config = read_config(path)
    group = config["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert group["num_bits"] == bits
    if bits == 4:
        assert group["group_size"] == 64  # 576 is not divisible by the usual 128
    assert infer_precision(config) == f"{bits}-bit"
    task = get_task("niah_single_2")
    samples = task.generate(Cell("niah_single_2", 1024, "en"), tok, 2, 3)
    with open_engine("hf", str(path), batch_size=2) as engine:
        outputs = engine.generate(samples)
    print(f"{recipe}: {[o.text for o in outputs]}")
    assert sum(task.score(s, o.text) for s, o in zip(samples, outputs)) >= 1


def test_missing_quantizer_environment_says_how_to_create_it(monkeypatch, tmp_path):
    monkeypatch.setenv("LONGQUANT_QUANT_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(QuantizeError, match="llmcompressor recipes run in their own environment.*python3 -m venv"):
        quant_python()
