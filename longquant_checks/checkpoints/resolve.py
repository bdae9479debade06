"""From what a user wrote (a path, a hub id, a recipe) to a local checkpoint an engine can open.

Every failure names the checkpoint and what to do; the caller (the plugin) turns it into one error
for that checkpoint's tests while the session goes on with the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .demo import DEMO_ALIASES, demo_model_path
from .recipes import get_recipe, unsupported_reason
from .spec import CheckpointError, check_safe_weights, fingerprint, infer_precision, read_config

# owner/name, optionally pinned to a revision (commit sha, branch or tag): owner/name@revision
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>(?!.*\.\.)[\w.][\w./-]*))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]

# quantization_config methods an engine cannot run on a device (measured; see docs/engines.md). Pairs not
# listed are tried, and a load failure is still reported per checkpoint.
CHECKPOINT_UNSUPPORTED: dict[tuple[str, str, str], str] = {
    **{("bitsandbytes", e, d): "vLLM 0.32+ has no bitsandbytes method; use the hf engine"
       for e in ("vllm", "openai") for d in ("cpu", "cuda")},
    ("fp8", "hf", "cpu"): "transformers' FP8 checkpoints need the `kernels` package and a GPU; use vllm",
    ("gptq", "vllm", "cpu"): "vLLM CPU runs 4-bit weight-only checkpoints in compressed-tensors format only; "
                             "re-export with llmcompressor or run on CUDA",
}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint ready to open: local folder, in-flight recipe (if any), precision class, identity."""

    name: str
    path: str
    precision: str
    fingerprint: str
    recipe: str | None = None  # an in-flight recipe the engine applies while loading
    produced: dict[str, Any] | None = None  # what a produced checkpoint was made from (produce.cache_key's record)
    engine_args: dict[str, Any] = field(default_factory=dict)
    revision: str | None = None  # hub commit sha of the checkpoint (of the reference, for a recipe); None if local

    @property
    def identity(self) -> dict[str, Any]:
        """What the results cache and baselines record about this checkpoint."""
        return {"name": self.name, "fingerprint": self.fingerprint, "revision": self.revision, "recipe": self.recipe,
                "produced": self.produced, "precision": self.precision}


def parse_hub_id(source: str) -> tuple[str, str | None] | None:
    """'owner/name' or 'owner/name@revision' as (repo_id, revision or None); None when `source` is no hub id."""
    match = _HUB_ID.match(source)
    if not match or source.startswith((".", "/", "~")):
        return None
    return match["repo"], match["revision"]


def locate(source: str, name: str) -> tuple[Path, str | None]:
    """`source` as a local folder (the demo alias, an existing folder, or a hub id downloaded once), and the hub
    commit sha it resolved to (None for a local folder)."""
    if source in DEMO_ALIASES:
        return demo_model_path(progress=lambda _msg: None), None
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {name!r}: {source} is a file; give the checkpoint's folder "
                                  "(with config.json and *.safetensors)")
        return path, None
    hub = parse_hub_id(source)
    if hub is None:
        raise CheckpointError(f"checkpoint {name!r}: {source} does not exist (not a folder, and not a hub id like "
                              "'owner/model' or 'owner/model@revision'); fix the path")
    return _download(*hub, name)


def local_path(source: str, name: str) -> Path:
    return locate(source, name)[0]


def _download(repo_id: str, revision: str | None, name: str) -> tuple[Path, str]:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError as exc:  # pragma: no cover - transformers depends on huggingface_hub
        raise CheckpointError(f"checkpoint {name!r}: hub id {repo_id} needs huggingface_hub ({exc})") from None
    shown = f"{repo_id}@{revision}" if revision else repo_id
    try:
        # Online it asks the hub which commit `revision` (default: main) is now; offline (HF_HUB_OFFLINE=1) it
        # reads refs/<revision> from the local hub cache. Either way the folder is snapshots/<commit sha>.
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise CheckpointError(f"checkpoint {name!r}: hub id {repo_id} not found (or private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"checkpoint {name!r}: hub id {repo_id} has no revision {revision!r} (a branch, tag "
                              "or full commit sha)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {name!r}: cannot download hub id {shown} and it is not in the local hub cache "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). With no network, download it elsewhere "
            "and give the folder as `source`") from None
    if not _COMMIT.match(path.name):
        raise CheckpointError(f"checkpoint {name!r}: hub id {shown} resolved to {path}, not a snapshots/<commit> "
                              "folder of the hub cache; cannot tell its revision")
    return path, path.name


def check_engine_can_run(path: Path, name: str, engine: str, device: str) -> None:
    """Refuse, with the reason, a checkpoint whose architecture or quantization the engine cannot run."""
    config = read_config(path)
    method = str((config.get("quantization_config") or {}).get("quant_method", "")).lower()
    dev = "cuda" if device.startswith("cuda") else "cpu"
    reason = CHECKPOINT_UNSUPPORTED.get((method, engine, dev))
    if reason:
        raise CheckpointError(f"checkpoint {name!r}: its quantization_config ({method}) cannot run on engine "
                              f"{engine!r} ({dev}): {reason}")
    if engine == "hf":
        from ..engines.hf import known_model_type

        model_type = config.get("model_type")
        if not known_model_type(model_type):
            raise CheckpointError(f"checkpoint {name!r}: architecture model_type={model_type!r} is not known to "
                                  "this transformers; upgrade transformers, or set trust_remote_code = true for "
                                  "this checkpoint if you trust its code")


def resolve(name: str, *, source: str | None = None, recipe: str | None = None, reference: str | None = None,
            precision: str | None = None, engine: str = "hf", device: str = "cpu",
            engine_args: dict[str, Any] | None = None, calibration=None) -> ResolvedCheckpoint:
    """Make the checkpoint concrete: download, produce (llmcompressor recipes, cached) or pass an in-flight recipe."""
    engine_args = dict(engine_args or {})
    dev = "cuda" if device.startswith("cuda") else "cpu"
    if recipe is not None:
        spec = get_recipe(recipe)
        reason = unsupported_reason(recipe, engine, dev)
        if reason:
            from ..errors import UnsupportedError

            raise UnsupportedError(f"candidate {name!r}: recipe {recipe!r} on engine {engine!r} ({dev}): {reason}")
        ref_path, ref_revision = locate(reference or "", f"{name} (its reference)")
        if spec.kind == "inflight":
            return ResolvedCheckpoint(name, str(ref_path), precision or spec.precision, fingerprint(ref_path),
                                      recipe=recipe, engine_args=engine_args, revision=ref_revision)
        from .produce import CalibrationSpec, produce, produced_record

        out = produce(ref_path, recipe, calibration or CalibrationSpec())
        check_engine_can_run(out, name, engine, dev)
        return ResolvedCheckpoint(name, str(out), precision or spec.precision, fingerprint(out),
                                  produced=produced_record(out), engine_args=engine_args, revision=ref_revision)
    path, revision = locate(source or "", name)
    check_safe_weights(path)
    check_engine_can_run(path, name, engine, dev)
    return ResolvedCheckpoint(name, str(path), precision or infer_precision(read_config(path)), fingerprint(path),
                              engine_args=engine_args, revision=revision)
