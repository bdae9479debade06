"""Engines, loaded lazily by name: installing the core needs no inference stack."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..checkpoints.recipes import get_recipe, unsupported_reason
from ..errors import SettingsError, UnknownValueError, UnsupportedError

_BACKENDS = {
    "hf": ("longquant_checks.engines.hf", "HFEngine"),
    "vllm": ("longquant_checks.engines.vllm", "VLLMEngine"),
    "openai": ("longquant_checks.engines.openai", "OpenAIEngine"),
}


def open_engine(kind: str, model_path: str, recipe: str | None = None, device: str = "cpu", **settings: Any):
    """An engine of `kind` for `model_path`, with an in-flight `recipe` applied if given."""
    if kind not in _BACKENDS:
        raise UnknownValueError("engine", kind, list(_BACKENDS))
    reason = unsupported_reason(recipe, kind, device)
    if reason:
        raise UnsupportedError(f"recipe {recipe!r} on engine {kind!r} ({device}): {reason}")
    if recipe is not None:
        spec = get_recipe(recipe)
        if spec.kind != "inflight":
            raise UnsupportedError(f"recipe {recipe!r} produces a checkpoint; quantize first, then open the result")
        settings["inflight"] = spec.params
    module, cls = _BACKENDS[kind]
    return getattr(import_module(module), cls)(model_path, device=device, **settings)


def divergence_unavailable(kind: str) -> str | None:
    """Why engine `kind` cannot measure the divergence signal (None: it can), known without opening one."""
    if kind not in _BACKENDS:
        raise UnknownValueError("engine", kind, list(_BACKENDS))
    module, cls = _BACKENDS[kind]
    return getattr(import_module(module), cls).divergence_unavailable


def resolve_device(device: str) -> str:
    """`auto` -> cuda where torch sees a GPU, else cpu (the only place outside an engine that asks torch)."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def visible_gpus() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applied); 0 without torch or CUDA."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def gpus_needed(settings: dict[str, Any]) -> int:
    """GPUs one vLLM engine of these settings spans: tensor x pipeline x data parallel sizes."""
    size = 1
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        value = settings.get(key)
        value = 1 if value is None else value
        if not isinstance(value, int) or value < 1:
            raise SettingsError(f"{key} = {value!r}: a positive integer is needed")
        size *= value
    return size
