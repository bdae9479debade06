"""GPU tests: marked `gpu`, skipped with the reason where this process sees no CUDA device (CI has none; they run on
a lent H200 through ../shared/device/pack-vllm.sh, docs/gpu.md)."""

import pytest


def _no_cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device visible (torch.cuda.is_available() is False): GPU tests run on a GPU machine"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _no_cuda_reason()
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.gpu)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
