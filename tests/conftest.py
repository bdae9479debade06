import os
from pathlib import Path

import pytest

from longquant_checks import PromptTokenizer, demo_model_path


def pytest_configure(config):
    """Under `pytest -n N` each worker (and what it starts: inner pytest runs, CLI subprocesses) computes on one
    thread: N workers of two OpenMP threads each on two cores spin against each other, and a model's token-by-token
    decoding, made of small operations, slowed ~10x that way (0.75 s a token instead of 0.075, measured)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass


@pytest.fixture(scope="session")
def demo_path():
    return demo_model_path()


@pytest.fixture(scope="session")
def tok(demo_path):
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template)."""
    return PromptTokenizer.from_pretrained(demo_path)


@pytest.fixture(scope="session")
def damaged(demo_path, tmp_path_factory) -> Path:
    """The demo model with every Linear weight rounded to 3 levels per row: a deliberately broken candidate."""
    import shutil


    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("damaged")
    for f in Path(demo_path).iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy(f, out / f.name)
    tensors = load_file(str(next(Path(demo_path).glob("*.safetensors"))))
    for name, t in tensors.items():
        if t.ndim == 2 and "embed" not in name:
            scale = t.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
            tensors[name] = (torch.round(t / scale) * scale).to(t.dtype).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
