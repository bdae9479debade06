"""The 26 OneRuler languages: templates, word pools and native haystack text, loaded from JSON data.

Each language is one file `languages/<code>.json` (data only, no code). `load_language` validates a
file completely, so a missing template, a wrong placeholder or a too-small pool is reported with the
file and the key instead of surfacing as a strange prompt at 128K tokens.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import LongquantError

LANGUAGES: tuple[str, ...] = (
    "cs", "da", "de", "en", "es", "fa", "fi", "fr", "hi", "hu", "it", "ja", "ko",
    "nl", "no", "pl", "pt", "ru", "sr", "st", "sv", "sw", "ta", "uk", "vi", "zh",
)

# Templates and the exact set of placeholders each must contain.
_NIAH_TEMPLATES = {
    "instruction": set(),
    "needle": {"key", "value"},
    "question": {"key"},
    "question_all": {"key"},
    "question_multi": {"keys"},
    "none_clause": {"key", "none"},
}
_TEMPLATES: dict[tuple[str, ...], set[str]] = {
    **{("niah", kind, name): ph for kind in ("number", "uuid") for name, ph in _NIAH_TEMPLATES.items()},
    # The answer's first words, to start the assistant turn with (RULER's answer_prefix), in the language's own words.
    ("niah", "number", "answer_prefix"): {"key"},
    ("niah", "number", "answer_prefix_all"): {"key"},
    ("niah", "number", "answer_prefix_multi"): {"keys"},
    ("niah", "uuid", "answer_prefix"): {"key"},
    ("vt", "instruction"): set(),
    ("vt", "question"): {"value"},
    ("vt", "answer"): {"count", "value", "variables"},
    ("cwe", "instruction"): set(),
    ("cwe", "question"): {"count"},
    ("cwe", "answer"): {"count", "words"},
    ("fwe", "instruction"): set(),
    ("fwe", "question"): set(),
    ("qa", "instruction"): set(),
    ("qa", "documents_intro"): set(),
    ("qa", "document_label"): {"index"},
    ("qa", "question"): {"question"},
    ("kv", "instruction"): set(),
    ("kv", "needle"): {"key", "value"},
    ("kv", "question"): set(),
}
# Minimum pool sizes: keys are adjective-noun pairs (RULER-style), so the product must be large
# enough for haystacks made of distractor needles; cwe needs many distinct words.
_MIN_POOL = {
    ("words", "adjectives"): 60,
    ("words", "nouns"): 100,
    ("words", "verbs"): 40,
    ("names", "person"): 40,
    ("names", "org"): 30,
    ("names", "city"): 30,
    ("names", "profession"): 20,
    ("haystack", "noise"): 5,
    ("haystack", "prose"): 100,
}
_ENTITY_TYPES = {"person", "org", "city", "profession"}


class LanguageDataError(LongquantError, ValueError):
    """A language file is missing, malformed or incomplete."""


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    direction: str
    sentence_join: str
    list_separator: str
    list_last: str
    none: tuple[str, ...]
    data: dict[str, Any]
    fingerprint: str  # sha256 of the language file: prompts change when it does

    def template(self, *path: str) -> str:
        node: Any = self.data
        for part in path:
            node = node[part]
        return node

    def fill(self, *path: str, **values: Any) -> str:
        return self.template(*path).format(**values)

    def join_list(self, items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        return self.list_separator.join(items[:-1]) + self.list_last + items[-1]

    def pool(self, section: str, name: str) -> tuple[str, ...]:
        return tuple(self.data[section][name])

    @property
    def none_word(self) -> str:
        return self.none[0]


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _get(data: dict[str, Any], path: tuple[str, ...], where: str) -> Any:
    node: Any = data
    for i, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            raise LanguageDataError(f"{where}: missing key {'.'.join(path[: i + 1])!r}")
        node = node[part]
    return node


def validate_language_data(data: dict[str, Any], where: str) -> None:
    """Raise LanguageDataError naming the first problem found in one language file's data."""
    for key in ("code", "name", "direction", "sentence_join", "list_separator", "list_last", "none"):
        _get(data, (key,), where)
    if data["direction"] not in ("ltr", "rtl"):
        raise LanguageDataError(f"{where}: direction must be 'ltr' or 'rtl', got {data['direction']!r}")
    if not data["none"] or not all(isinstance(w, str) and w.strip() for w in data["none"]):
        raise LanguageDataError(f"{where}: 'none' must be a non-empty list of words for 'none'")
    for path, expected in _TEMPLATES.items():
        text = _get(data, path, where)
        if not isinstance(text, str) or not text.strip():
            raise LanguageDataError(f"{where}: {'.'.join(path)} must be a non-empty string")
        found = _placeholders(text)
        if found != expected:
            raise LanguageDataError(
                f"{where}: {'.'.join(path)} has placeholders {sorted(found)}, expected {sorted(expected)}"
            )
    for path, minimum in _MIN_POOL.items():
        items = _get(data, path, where)
        if not isinstance(items, list) or len(items) < minimum:
            n = len(items) if isinstance(items, list) else "not a list"
            raise LanguageDataError(f"{where}: {'.'.join(path)} needs at least {minimum} entries, has {n}")
        if len(set(items)) != len(items):
            dupes = sorted({x for x in items if items.count(x) > 1})
            raise LanguageDataError(f"{where}: {'.'.join(path)} has duplicates: {dupes[:5]}")
        for item in items:
            if not isinstance(item, str) or not item.strip() or item != item.strip():
                raise LanguageDataError(f"{where}: {'.'.join(path)} has an empty or padded entry {item!r}")
            # Digits in haystack or names would collide with needle values and numeric scoring.
            if re.search(r"\d", item) or "{" in item or "}" in item:
                raise LanguageDataError(f"{where}: {'.'.join(path)} entry {item!r} contains a digit or brace")
    words = [w for name in ("adjectives", "nouns", "verbs") for w in data["words"][name]]
    for w in words:
        if re.search(r"\s", w):
            raise LanguageDataError(f"{where}: word {w!r} contains whitespace; words must be single tokens of text")
    if len(set(w.casefold() for w in words)) < 200:
        raise LanguageDataError(f"{where}: words.adjectives+nouns+verbs need 200 distinct words (case-insensitive)")
    qa = data["qa"]
    facts, two_hop, filler = (_get(data, ("qa", k), where) for k in ("facts", "two_hop", "filler"))
    if len(facts) < 8 or len(two_hop) < 4 or len(filler) < 4:
        raise LanguageDataError(f"{where}: qa needs >=8 facts, >=4 two_hop and >=4 filler sentences")
    for i, fact in enumerate(facts):
        _check_fact(fact, f"{where}: qa.facts[{i}]", {"text": {"subject", "answer"}, "question": {"subject"}})
    for i, fact in enumerate(two_hop):
        _check_fact(
            fact,
            f"{where}: qa.two_hop[{i}]",
            {"bridge": {"subject", "bridge"}, "target": {"bridge", "answer"}, "question": {"subject"}},
        )
    for i, text in enumerate(filler):
        if _placeholders(text) != {"subject"}:
            raise LanguageDataError(f"{where}: qa.filler[{i}] must contain exactly {{subject}}")
    del qa


def _check_fact(fact: dict[str, Any], where: str, templates: dict[str, set[str]]) -> None:
    for key in ("subject", "answer"):
        if fact.get(key) not in _ENTITY_TYPES:
            raise LanguageDataError(f"{where}.{key} must be one of {sorted(_ENTITY_TYPES)}, got {fact.get(key)!r}")
    for key, expected in templates.items():
        text = fact.get(key)
        if not isinstance(text, str) or _placeholders(text) != expected:
            raise LanguageDataError(f"{where}.{key} must be a string with placeholders {sorted(expected)}")


def _language_dir() -> Path:
    return Path(str(resources.files("longquant_checks.text") / "languages"))


@lru_cache(maxsize=None)
def load_language(code: str) -> Language:
    if code not in LANGUAGES:
        raise LanguageDataError(f"unknown language {code!r}; accepted: {', '.join(LANGUAGES)}")
    path = _language_dir() / f"{code}.json"
    if not path.is_file():
        raise LanguageDataError(f"language data file {path} is missing")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LanguageDataError(f"{path}: not valid UTF-8 JSON: {exc}") from exc
    validate_language_data(data, str(path))
    if data["code"] != code:
        raise LanguageDataError(f"{path}: code is {data['code']!r}, expected {code!r}")
    return Language(
        code=code,
        name=data["name"],
        direction=data["direction"],
        sentence_join=data["sentence_join"],
        list_separator=data["list_separator"],
        list_last=data["list_last"],
        none=tuple(data["none"]),
        data=data,
        fingerprint=hashlib.sha256(raw).hexdigest(),
    )


if __name__ == "__main__":  # python -m longquant_checks.text.languages [code ...]: validate files
    import sys

    for code in sys.argv[1:] or LANGUAGES:
        try:
            lang = load_language(code)
            print(f"{code}: ok ({lang.name}, {len(lang.pool('haystack', 'prose'))} prose sentences)")
        except LanguageDataError as exc:
            print(f"{code}: {exc}")
