"""Bundled presets: the source studies' model matrix as partial configs (docs/presets.md).

A preset is a TOML file next to this module, named after its reference model (`qwen2.5-7b-instruct.toml`),
holding the keys of a longquant.toml (docs/config.md). `merge_preset` lays a user's keys over it; the result is
validated by `config.parse_config` like any config. Nothing here downloads or loads a model.
"""

from __future__ import annotations

import copy
import tomllib
from importlib.resources import files
from typing import Any

from ..errors import UnknownValueError

_HERE = files(__name__)

PRESETS: list[str] = sorted(entry.name.removesuffix(".toml") for entry in _HERE.iterdir()
                            if entry.name.endswith(".toml") and entry.is_file())


def load_preset(name: str) -> dict[str, Any]:
    """The preset's keys as a fresh dict (callers may change it); an unknown name lists the accepted ones."""
    if name not in PRESETS:
        raise UnknownValueError("preset", name, PRESETS)
    return tomllib.loads(_HERE.joinpath(f"{name}.toml").read_text(encoding="utf-8"))


def _as_table(reference: Any) -> Any:
    return {"source": reference} if isinstance(reference, str) else reference


def _merge_reference(preset: Any, user: Any) -> Any:
    """`reference` merges as a table: a user string replaces the source and keeps the preset's engine_args
    (a local copy of the same model still gets the preset's RoPE override); user engine_args win per key."""
    p, u = _as_table(preset), _as_table(user)
    if not (isinstance(p, dict) and isinstance(u, dict)):
        return copy.deepcopy(user)
    merged = {**copy.deepcopy(p), **copy.deepcopy(u)}
    if isinstance(p.get("engine_args"), dict) and isinstance(u.get("engine_args"), dict):
        merged["engine_args"] = {**copy.deepcopy(p["engine_args"]), **copy.deepcopy(u["engine_args"])}
    return merged


def _merge_candidates(preset: Any, user: Any) -> Any:
    """The preset's candidates, then the user's: a user candidate with a preset candidate's name takes its place."""
    if not (isinstance(preset, list) and isinstance(user, list)):
        return copy.deepcopy(user)  # not a list of tables: let the config validation name the problem
    merged = copy.deepcopy(preset)
    position = {c.get("name"): i for i, c in enumerate(merged) if isinstance(c, dict)}
    for candidate in user:
        name = candidate.get("name") if isinstance(candidate, dict) else None
        if name is not None and name in position:
            merged[position[name]] = copy.deepcopy(candidate)
        else:
            merged.append(copy.deepcopy(candidate))
    return merged


def merge_preset(preset: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """A new config dict: the preset's keys with the user's on top. Neither argument is changed.

    - any key: the user's value replaces the preset's;
    - `candidates`: the user's are added after the preset's; one with the same name replaces the preset's;
    - `engine_args`: merged, the user's value wins per key;
    - `reference`: merged as a table (a string is its `source`), engine_args merged per key.
    """
    merged = copy.deepcopy(preset)
    for key, value in user.items():
        if key == "candidates" and key in merged:
            merged[key] = _merge_candidates(merged[key], value)
        elif key == "engine_args" and isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **copy.deepcopy(value)}
        elif key == "reference" and key in merged:
            merged[key] = _merge_reference(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


__all__ = ["PRESETS", "load_preset", "merge_preset"]
