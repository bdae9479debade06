"""Task base class, the task registry, shared generators (keys, values, depths) and RULER's scorers."""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import UnknownValueError
from ..schema import BUCKETS, Cell, Sample
from ..text.fitting import FitError
from ..text.haystack import HaystackSource, builtin_source, corpus_source
from ..text.languages import LANGUAGES, Language, load_language
from ..text.tokens import PromptTokenizer

DEPTH_GRID = 40  # RULER: needles at 40 evenly spaced depths


@dataclass(frozen=True)
class TextSources:
    """User-supplied text: a corpus folder per language (replaces the prose haystack), a QA JSONL file."""

    corpora: dict[str, str] = field(default_factory=dict)
    qa_file: str | None = None

    def __post_init__(self) -> None:
        for code in self.corpora:
            if code not in LANGUAGES:
                raise UnknownValueError("language in corpora", code, LANGUAGES)

    def haystack(self, language: Language, kind: str) -> HaystackSource:
        if kind == "prose" and language.code in self.corpora:
            return corpus_source(self.corpora[language.code], language)
        return builtin_source(language, kind)


# -- deterministic randomness ----------------------------------------------------------------
def sample_rng(*parts: object) -> random.Random:
    """A generator seeded from a string: stable across runs, processes and PYTHONHASHSEED."""
    seed = hashlib.sha256(":".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(seed[:16], "big"))


def _bit_reversed(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2)


# The grid points in bit-reversal (van der Corput) order: each prefix is spread over the whole range.
_DEPTH_ORDER = [g for g in (_bit_reversed(i, 6) for i in range(64)) if g < DEPTH_GRID]


def depth_for(index: int) -> float:
    """Depth of sample `index`: every point of RULER's 40-point grid once per 40 samples, in an order
    where any prefix is spread evenly. So the first k samples of a set of n are the same prompts as a
    set of k (a `--limit` run still matches its baseline)."""
    return _DEPTH_ORDER[index % DEPTH_GRID] / (DEPTH_GRID - 1)


def spread_depths(rng: random.Random, count: int) -> list[float]:
    """`count` distinct depths from the grid (for the extra needles of multi-needle tasks)."""
    return sorted(d / (DEPTH_GRID - 1) for d in rng.sample(range(DEPTH_GRID), count))


def key_space(language: Language) -> int:
    """How many distinct word keys the language has: two different adjectives and a noun, in that order.
    RULER's keys are adjective-noun pairs from 6.17M English pairs; ours are native words in 26 languages, and
    pairs alone would give ~7,000 keys, so a 128K haystack of ~6,000 distractor needles repeated keys. Three
    words give 300K-1M per language."""
    adjectives, nouns = len(language.pool("words", "adjectives")), len(language.pool("words", "nouns"))
    return adjectives * (adjectives - 1) * nouns


def key_at(language: Language, index: int) -> str:
    """Word key number `index` of the language's key space (adjective-adjective-noun)."""
    adjectives, nouns = language.pool("words", "adjectives"), language.pool("words", "nouns")
    index, first = divmod(index, len(adjectives))
    noun, second = divmod(index, len(adjectives) - 1)
    second += second >= first  # the second adjective differs from the first
    return f"{adjectives[first]}-{adjectives[second]}-{nouns[noun]}"


def word_key(rng: random.Random, language: Language) -> str:
    """A random word key of the language."""
    return key_at(language, rng.randrange(key_space(language)))


def distinct_word_keys(rng: random.Random, language: Language, count: int) -> list[str]:
    """`count` different word keys, drawn one at a time (so any prefix of a longer draw is the shorter draw)."""
    space = key_space(language)
    if count > space:
        raise ValueError(f"{language.code} has {space} word keys, {count} asked")
    seen: dict[int, None] = {}
    while len(seen) < count:
        seen.setdefault(rng.randrange(space))
    return [key_at(language, i) for i in seen]


def number_value(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))  # 7 digits, as RULER


def uuid_value(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# -- scoring (RULER: strip, drop control characters, case-insensitive substring) --------------
def normalize_prediction(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in "\n\t").casefold()


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's metric for niah/vt/cwe/fwe: fraction of references found in the prediction."""
    pred = normalize_prediction(prediction)
    return sum(normalize_prediction(ref) in pred for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER's metric for qa: 1 if any reference is found (references are paraphrases)."""
    pred = normalize_prediction(prediction)
    return float(any(normalize_prediction(ref) in pred for ref in references))


_ZWNJ = "\u200c"  # Persian writes a compound's morphemes apart with it: هیچ‌کس "nobody" = هیچ + کس


def _normalize_keeping_zwnj(text: str) -> str:
    # normalize_prediction drops control characters, ZWNJ (category Cf) among them
    return _ZWNJ.join(normalize_prediction(part) for part in text.split(_ZWNJ))


def _is_word_char(ch: str) -> bool:
    """Letters, digits and combining marks of any script (`\\w` lacks marks: Hindi/Tamil vowel signs).
    Underscore is not one: `_none_` is Markdown emphasis of the word."""
    return unicodedata.category(ch)[0] in "LNM"


def _is_unspaced(ch: str) -> bool:
    """Han, Hiragana or Katakana: scripts written without spaces between words."""
    return unicodedata.name(ch, "").startswith(("CJK ", "HIRAGANA", "KATAKANA"))


def none_match(prediction: str, none_words: list[str]) -> float:
    """OneRuler's strict niah_none: the language's 'none' word must appear and no digit (any script) may.

    Scripts with spaces: a none word counts only as a whole word, not preceded or followed by a letter,
    digit or combining mark of any script ("нет" is not in "планета", "none" not in "nonetheless").
    Whitespace inside a multi-word none word ("ei mitään") matches any whitespace run. A ZWNJ is a
    boundary (هیچ in هیچ‌کس) and optional inside a none word (هیچ‌کدام also matches هیچکدام).
    Han/Kana none words (zh 无 没有 不存在, ja なし 無し ない 該当なし) count as substrings: these
    scripts have no word delimiters, and a negation glued to its neighbours is still a negation
    (没有提到, 存在しない); telling 无法 "cannot" or 少ない "few" apart would need a word segmenter.
    """
    pred = _normalize_keeping_zwnj(prediction)
    if re.search(r"\d", pred):
        return 0.0
    for word in none_words:
        w = _normalize_keeping_zwnj(word)
        if not w.strip(_ZWNJ):
            continue  # nothing left to look for
        if any(map(_is_unspaced, w)):
            if w in pred:
                return 1.0
            continue
        pattern = r"\s+".join(re.escape(token).replace(_ZWNJ, _ZWNJ + "?") for token in w.split())
        for m in re.finditer(f"(?=({pattern}))", pred):  # a lookahead finds overlapping matches too
            start, end = m.span(1)
            glued_before = start > 0 and _is_word_char(pred[start - 1])
            glued_after = end < len(pred) and _is_word_char(pred[end])
            if not (glued_before or glued_after):
                return 1.0
    return 0.0


# -- the task base class and registry -------------------------------------------------------
class Task(ABC):
    """A deterministic sample generator plus a scorer. Subclasses set the class attributes."""

    name: ClassVar[str]
    version: ClassVar[str]
    family: ClassVar[str]
    metric: ClassVar[str]  # "all", "part", "none" or "f1"
    description: ClassVar[str]
    scorer_version: ClassVar[str] = "1"  # bumped when `score` changes; stored results are re-scored from their text

    def __init__(self, sources: TextSources | None = None):
        self.sources = sources or TextSources()

    @abstractmethod
    def max_new_tokens(self, cell: Cell, tok: PromptTokenizer) -> int:
        """The generation budget: big enough for a chatty instruct model to finish its answer."""

    @abstractmethod
    def build(self, cell: Cell, tok: PromptTokenizer, language: Language, seed: int, index: int) -> Sample:
        """Sample `index` of the cell; must depend only on (version, cell, tokenizer, seed, index)."""

    @abstractmethod
    def score(self, sample: Sample, text: str) -> float:
        """Score in [0, 1] of the model's answer `text` to `sample`."""

    def sources_fingerprint(self, language: str) -> str:
        """Identity of the text this task reads for `language` (part of the sample cache key)."""
        lang = load_language(language)
        prose = self.sources.haystack(lang, "prose").fingerprint  # a user's corpus, or the shipped prose
        return hashlib.sha256((lang.fingerprint + prose).encode()).hexdigest()

    def check_cell(self, cell: Cell) -> Language:
        if cell.task != self.name:
            raise ValueError(f"cell {cell.id} is for task {cell.task!r}, not {self.name!r}")
        if cell.bucket not in BUCKETS.values():
            raise UnknownValueError("bucket", cell.bucket, list(BUCKETS))
        return load_language(cell.language)

    def generate(self, cell: Cell, tok: PromptTokenizer, n: int, seed: int) -> list[Sample]:
        language = self.check_cell(cell)
        try:
            return [self.build(cell, tok, language, seed, i) for i in range(n)]
        except FitError as exc:
            raise FitError(f"{cell.id}: {exc}; this tokenizer needs a longer bucket for this task "
                           "and language (the cell is skipped)") from exc

    def rng(self, cell: Cell, seed: int, index: int, *extra: object) -> random.Random:
        return sample_rng(self.name, self.version, cell.bucket, cell.language, seed, index, *extra)

    def sample_id(self, cell: Cell, seed: int, index: int) -> str:
        return f"{cell.id}-s{seed}-{index:04d}"


_REGISTRY: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


# RULER's order, then OneRuler's and ours: the order of plans and reports, whatever was imported first.
_BUILTIN_ORDER = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "niah_none", "vt", "cwe", "fwe", "qa_1", "qa_2", "kv_recall",
)


def task_names() -> list[str]:
    _load_builtin_tasks()
    rank = {name: i for i, name in enumerate(_BUILTIN_ORDER)}
    return sorted(_REGISTRY, key=lambda name: (rank.get(name, len(rank)), list(_REGISTRY).index(name)))


def get_task(name: str, sources: TextSources | None = None) -> Task:
    _load_builtin_tasks()
    if name not in _REGISTRY:
        raise UnknownValueError("task", name, task_names())
    return _REGISTRY[name](sources)


def _load_builtin_tasks() -> None:
    from . import cwe, fwe, kv, niah, qa, vt  # noqa: F401  (imported for their registration)


def make_sample(task: Task, cell: Cell, seed: int, index: int, content: str, token_ids: list[int],
                answers: list[str], max_new_tokens: int, *, tok: PromptTokenizer | None = None,
                answer_prefix: str = "", **metadata: object) -> Sample:
    """A sample; `answer_prefix` is the one the prompt ids end with ("" for none). Its messages (for text-only
    servers) carry the tokenizer style's system turn and the started assistant turn."""
    metadata = {"task_version": task.version, "language": cell.language, "seed": seed, "index": index, **metadata}
    if tok is not None:
        metadata["prompt"] = tok.prompt_record()
    if answer_prefix:
        metadata["answer_prefix"] = answer_prefix
    messages = tok.messages(content, answer_prefix) if tok is not None else [{"role": "user", "content": content}]
    return Sample(
        id=task.sample_id(cell, seed, index),
        cell=cell,
        messages=messages,
        answers=answers,
        prompt_token_ids=token_ids,
        max_new_tokens=max_new_tokens,
        metadata=metadata,
    )

