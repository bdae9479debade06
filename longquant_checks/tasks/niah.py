"""Needle-in-a-haystack families: RULER's eight plus OneRuler's niah_none."""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field


from ..schema import Cell, Sample
from ..text.fitting import Insert, PieceFiller, TextFiller, assemble
from ..text.languages import Language
from ..text.tokens import PromptTokenizer
from .base import (
    Task, depth_for, distinct_word_keys, make_sample, none_match, number_value, register_task, sample_rng,
    spread_depths, string_match_all, uuid_value, word_key,
)

_MIN_POOL = 2048  # distractor needles in the smallest pool
_POOLS_KEPT = 16  # (tokenizer, language, task) pools kept in memory


@dataclass
class DistractorPool:
    """Distractor needles of one task for one language and tokenizer, each tokenized once, with distinct keys and
    distinct values. Drawn one at a time from their own random streams, so a pool of 4096 starts with the pool of
    2048: a sample's draws depend only on its cell, never on which cells were built before in this process."""

    text_of: object  # (key, value) -> the needle's text
    key_rng: random.Random
    value_rng: random.Random
    draw_key: object  # rng -> key
    draw_value: object  # rng -> value
    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    ids: list[tuple[int, ...]] = field(default_factory=list)
    key_index: dict[str, int] = field(default_factory=dict)
    value_index: dict[str, int] = field(default_factory=dict)
    _shortest: dict[int, int] = field(default_factory=dict)

    def grow(self, tok: PromptTokenizer, size: int) -> None:
        new_keys, new_values = [], []
        while len(self.keys) + len(new_keys) < size:
            key = self.draw_key(self.key_rng)
            if key not in self.key_index:
                self.key_index[key] = len(self.keys) + len(new_keys)
                new_keys.append(key)
        while len(self.values) + len(new_values) < size:
            value = self.draw_value(self.value_rng)
            if value not in self.value_index:
                self.value_index[value] = len(self.values) + len(new_values)
                new_values.append(value)
        texts = [self.text_of(k, v) for k, v in zip(new_keys, new_values)]
        self.keys += new_keys
        self.values += new_values
        self.texts += texts
        self.ids += tok.encode_many(texts, cache=False)

    def shortest(self, size: int) -> int:
        if size not in self._shortest:
            self._shortest[size] = min(len(ids) for ids in self.ids[:size])
        return self._shortest[size]

    def size_for(self, tok: PromptTokenizer, budget: int) -> int:
        """The pool size a prompt of `budget` tokens draws from: a power of two, at least 1.5x what it uses."""
        self.grow(tok, _MIN_POOL)
        mean = sum(len(ids) for ids in self.ids[:256]) / 256
        size = _MIN_POOL
        while size < 1.5 * budget / mean:
            size *= 2
        self.grow(tok, size)
        return size


@dataclass(frozen=True)
class NiahSpec:
    haystack: str  # "noise" (RULER's repeated sentences), "prose" (native text), "needle" (distractor needles)
    key_kind: str  # "word" (adjective-noun) or "uuid"
    value_kind: str  # "number" (7 digits) or "uuid"
    num_keys: int = 1  # needles with distinct keys; the first `num_queries` are asked
    num_values: int = 1  # values hidden for each asked key
    num_queries: int = 1
    absent: bool = False  # niah_none: the asked key is not in the text; the answer is "none"


_POOLS: OrderedDict[tuple, DistractorPool] = OrderedDict()


class NiahTask(Task):
    family = "niah"
    version = "2"
    spec: NiahSpec

    def max_new_tokens(self, cell: Cell, tok: PromptTokenizer) -> int:
        # RULER: 128. Measured with SmolLM2 (docs/tasks.md), without an answer prefix: one number ~24 tokens, one
        # UUID ~54, four keys restated with four 7-digit numbers ~121, so the multi-answer families get 192. After
        # the answer prefix the answer comes first: one number 9 tokens, one UUID 37 (bench/answer_lengths.py), so
        # the single-answer families get 64 there; what follows the answer (a model running on into the
        # haystack, as the demo model does in Spanish) no longer costs 128 steps.
        multi = self.spec.num_values > 1 or self.spec.num_queries > 1
        if tok.style.answer_prefix and tok.frame.prefill:
            return 128 if multi else 64
        return 192 if multi else 128

    def _key(self, rng: random.Random, language: Language) -> str:
        return uuid_value(rng) if self.spec.key_kind == "uuid" else word_key(rng, language)

    def _value(self, rng: random.Random) -> str:
        return uuid_value(rng) if self.spec.value_kind == "uuid" else number_value(rng)

    def _distinct_keys(self, rng: random.Random, language: Language, count: int) -> list[str]:
        if self.spec.key_kind == "word":
            return distinct_word_keys(rng, language, count)
        keys: list[str] = []
        while len(keys) < count:
            key = uuid_value(rng)
            if key not in keys:
                keys.append(key)
        return keys

    def _pool(self, tok: PromptTokenizer, language: Language) -> DistractorPool:
        ident = (tok.fingerprint, language.fingerprint, self.name, self.version)
        if ident not in _POOLS:
            kind = self.spec.value_kind

            def text_of(key: str, value: str) -> str:
                return language.sentence_join + language.fill("niah", kind, "needle", key=key, value=value)

            _POOLS[ident] = DistractorPool(text_of, sample_rng(*ident[1:], "distractor-keys"),
                                           sample_rng(*ident[1:], "distractor-values"),
                                           lambda rng: self._key(rng, language), self._value)
            while len(_POOLS) > _POOLS_KEPT:
                _POOLS.popitem(last=False)
        _POOLS.move_to_end(ident)
        return _POOLS[ident]

    def _distractors(self, rng: random.Random, tok: PromptTokenizer, language: Language, budget: int,
                     taken_keys: set[str], taken_values: set[str]) -> PieceFiller:
        """Distractor needles for one prompt: a random draw from the pool, none with a key or value of this
        sample's own needles."""
        pool = self._pool(tok, language)
        size = pool.size_for(tok, budget)
        excluded = {pool.key_index.get(k) for k in taken_keys} | {pool.value_index.get(v) for v in taken_values}
        drawn = rng.sample(range(size), min(size, budget // pool.shortest(size) + 64))
        pad = TextFiller(self.sources.haystack(language, "prose").units(rng))
        return PieceFiller(pool.texts, pool.ids, (i for i in drawn if i not in excluded), pad)

    def build(self, cell: Cell, tok: PromptTokenizer, language: Language, seed: int, index: int) -> Sample:
        spec = self.spec
        rng = self.rng(cell, seed, index)
        kind = spec.value_kind
        # niah_none: one extra key is drawn and asked but never hidden.
        keys = self._distinct_keys(rng, language, spec.num_keys + (1 if spec.absent else 0))
        asked = keys[: spec.num_queries]
        hidden_keys = keys[1:] if spec.absent else keys
        values: dict[str, list[str]] = {}
        used_values: set[str] = set()
        for key in hidden_keys:
            per_key = spec.num_values if key in asked else 1
            values[key] = []
            while len(values[key]) < per_key:
                value = self._value(rng)
                if value not in used_values:
                    used_values.add(value)
                    values[key].append(value)
        needles = [(key, value) for key in hidden_keys for value in values[key]]
        depths = [depth_for(index)] + spread_depths(rng, len(needles) - 1) if needles else []
        rng.shuffle(needles)  # which needle sits at the sample's own depth varies too
        inserts = [
            Insert(language.sentence_join + language.fill("niah", kind, "needle", key=k, value=v), d,
                   tag=f"needle:{k}")
            for (k, v), d in zip(needles, depths)
        ]
        budget = cell.bucket - self.max_new_tokens(cell, tok)
        if spec.haystack == "needle":
            filler = self._distractors(rng, tok, language, budget, set(keys), used_values)
        else:
            filler = self.sources.haystack(language, spec.haystack).units(rng)
        if spec.num_queries > 1:
            question = language.fill("niah", kind, "question_multi", keys=language.join_list(asked))
            prefix = language.fill("niah", kind, "answer_prefix_multi", keys=language.join_list(asked))
        elif spec.num_values > 1:
            question = language.fill("niah", kind, "question_all", key=asked[0])
            prefix = language.fill("niah", kind, "answer_prefix_all", key=asked[0])
        else:
            question = language.fill("niah", kind, "question", key=asked[0])
            prefix = language.fill("niah", kind, "answer_prefix", key=asked[0])
        if spec.absent:
            question += " " + language.fill("niah", kind, "none_clause", key=asked[0], none=language.none_word)
        head = language.fill("niah", kind, "instruction") + "\n\n"
        tail = "\n\n" + question
        built = assemble(tok, head, tail, inserts, filler, budget, answer_prefix=prefix)
        answers = list(language.none) if spec.absent else [v for key in asked for v in values[key]]
        return make_sample(
            self, cell, seed, index, built.content, built.token_ids, answers, self.max_new_tokens(cell, tok),
            tok=tok, answer_prefix=built.answer_prefix,
            keys=asked, needles=[{"key": k, "value": v} for k, v in needles], positions=built.positions,
            depth=depths[0] if depths else None, haystack=spec.haystack, context_tokens=built.context_tokens,
            filler_end=built.last_unit,
        )

    def score(self, sample: Sample, text: str) -> float:
        if self.spec.absent:
            return none_match(text, sample.answers)
        return string_match_all(text, sample.answers)


def _niah(name: str, spec: NiahSpec, description: str) -> type[NiahTask]:
    cls = type(f"Niah_{name}", (NiahTask,), {
        "name": name, "spec": spec, "description": description,
        "metric": "none" if spec.absent else "all",
    })
    return register_task(cls)


_niah("niah_single_1", NiahSpec("noise", "word", "number"),
      "one word key -> 7-digit number in RULER's repeated noise sentences")
_niah("niah_single_2", NiahSpec("prose", "word", "number"),
      "one word key -> 7-digit number in native prose")
_niah("niah_single_3", NiahSpec("prose", "word", "uuid"),
      "one word key -> UUID in native prose")
_niah("niah_multikey_1", NiahSpec("prose", "word", "number", num_keys=4),
      "4 needles with different keys in prose; one key is asked")
_niah("niah_multikey_2", NiahSpec("needle", "word", "number"),
      "the haystack is made of distractor needles with other word keys")
_niah("niah_multikey_3", NiahSpec("needle", "uuid", "uuid"),
      "UUID key -> UUID value among distractor needles with UUID keys and values")
_niah("niah_multivalue", NiahSpec("prose", "word", "number", num_values=4),
      "4 values hidden for one key; all must be recalled")
_niah("niah_multiquery", NiahSpec("prose", "word", "number", num_keys=4, num_queries=4),
      "4 keys hidden and all 4 asked")
niah_none = _niah("niah_none", NiahSpec("prose", "word", "number", num_keys=4, absent=True),
                  "OneRuler: 4 distractor needles, the asked key is absent; correct answer is the word for 'none'")
niah_none.scorer_version = "2"  # none_match got Unicode word boundaries; prompts unchanged, so `version` stays
