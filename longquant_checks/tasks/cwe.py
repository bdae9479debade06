"""Common words extraction (RULER cwe): name the 10 most frequent words of a long numbered list.

RULER: 10 common words x30 among uncommon words x3, one worked example. Our per-language pools hold
a few hundred words, fewer than a 128K list needs, so when the pool runs out both frequencies are
scaled by the same factor (the 10:1 ratio and the answer stay the same); at 1K-2K, where 300 common
items do not fit, they are scaled down (common stays strictly more frequent than uncommon).
"""

from __future__ import annotations



import numpy as np

from ..schema import Cell, Sample
from ..text.fitting import FitError, fixed_cost, frame
from ..text.languages import Language
from ..text.tokens import PromptTokenizer
from .base import Task, make_sample, register_task, string_match_all

NUM_COMMON = 10
FREQ_COMMON, FREQ_UNCOMMON = 30, 3
_EXAMPLE_COMMON, _EXAMPLE_UNCOMMON = 2, 10  # the worked example: 10 words x2 + 10 words x1


def _pool(language: Language) -> list[str]:
    words, seen = [], set()
    for name in ("nouns", "adjectives", "verbs"):
        for w in language.pool("words", name):
            if w.casefold() not in seen:
                seen.add(w.casefold())
                words.append(w)
    return words


def _numbered(words: list[str]) -> tuple[list[str], list[str]]:
    """RULER's list format '1. word 2. word ...', as (number pieces, word pieces)."""
    return [f"{' ' if i else chr(10) * 2}{i + 1}." for i in range(len(words))], [f" {w}" for w in words]


@register_task
class CommonWordsExtraction(Task):
    name = "cwe"
    family = "cwe"
    version = "3"  # 2: extra occurrences below the common frequency when it is scaled down to 2; 3: answer prefix
    metric = "all"
    description = "common words extraction: the 10 words repeated most often in a numbered word list"

    def max_new_tokens(self, cell: Cell, tok: PromptTokenizer) -> int:
        return 128  # RULER: 120

    def build(self, cell: Cell, tok: PromptTokenizer, language: Language, seed: int, index: int) -> Sample:
        rng = self.rng(cell, seed, index)
        pool = _pool(language)
        rng.shuffle(pool)
        example_common, example_other = pool[:NUM_COMMON], pool[NUM_COMMON:NUM_COMMON + _EXAMPLE_UNCOMMON]
        common, uncommon = pool[2 * NUM_COMMON:3 * NUM_COMMON], pool[3 * NUM_COMMON:]

        example_words = example_common * _EXAMPLE_COMMON + example_other
        rng.shuffle(example_words)
        nums, words = _numbered(example_words)
        example = (
            language.fill("cwe", "instruction") + "".join(n + w for n, w in zip(nums, words)) + "\n\n"
            + language.fill("cwe", "question", count=NUM_COMMON) + "\n"
            + language.fill("cwe", "answer", count=NUM_COMMON, words=language.join_list(example_common))
        )
        head = example + "\n\n" + language.fill("cwe", "instruction")
        tail = "\n\n" + language.fill("cwe", "question", count=NUM_COMMON)
        # RULER's answer prefix: the worked example's answer up to its words.
        prefix = language.template("cwe", "answer").split("{words}")[0].format(count=NUM_COMMON).rstrip()
        room = cell.bucket - self.max_new_tokens(cell, tok) - fixed_cost(tok, head, tail, prefix)
        with_example = room >= 0.4 * cell.bucket
        if not with_example:  # scripts that take many tokens per word, at 1K-2K: no room for the example
            head = language.fill("cwe", "instruction")
            room = cell.bucket - self.max_new_tokens(cell, tok) - fixed_cost(tok, head, tail, prefix)

        word_len = dict(zip(common + uncommon, map(len, tok.encode_many([f" {w}" for w in common + uncommon]))))
        avg_word = sum(word_len.values()) / len(word_len)
        typical_number = len(tok.encode(f" {max(room // 8, 2)}."))
        max_items = int(1.25 * room / (avg_word + typical_number)) + 64  # a safe upper bound on list length
        # cum_number[i]: tokens of the list numbers 1..i ("\n\n1." then " 2.", " 3.", ...)
        cum_number = np.concatenate([[0], np.cumsum([len(ids) for ids in tok.encode_many(
            ["\n\n1."] + [f" {i}." for i in range(2, max_items + 1)])])])
        items_fit = int(np.searchsorted(cum_number + avg_word * np.arange(len(cum_number)), room, side="right")) - 1
        freq_c, freq_u = FREQ_COMMON, FREQ_UNCOMMON
        if NUM_COMMON * freq_c > items_fit / 2:  # short buckets: scale down, keep common > uncommon
            freq_c = max(2, items_fit // (2 * NUM_COMMON))
            freq_u = max(1, freq_c // 10)
        elif items_fit > NUM_COMMON * freq_c + freq_u * len(uncommon):  # pool too small: scale both, keep 10:1
            freq_u = items_fit // (NUM_COMMON * 10 + len(uncommon))
            freq_c = 10 * freq_u

        chosen: list[str] = []
        total = 0

        def add(word: str, times: int) -> bool:
            nonlocal total
            n = len(chosen)
            if n + times > max_items:
                return False
            cost = int(cum_number[n + times] - cum_number[n]) + times * word_len[word]
            if total + cost > room:
                return False
            chosen.extend([word] * times)
            total += cost
            return True

        for word in common:
            if not add(word, freq_c):
                raise FitError(f"the {NUM_COMMON} common words x{freq_c} do not fit the {room} tokens left")
        counts = dict.fromkeys(uncommon, 0)
        for word in uncommon:  # uncommon words at their frequency while they fit
            if not add(word, freq_u):
                break
            counts[word] = freq_u
        extra_cap = min(2 * freq_u, freq_c - 1)  # strictly below common, also when common is scaled down to 2
        added = True
        while added:  # then single extra occurrences to fill the bucket, staying well below common
            added = False
            for word in uncommon:
                if counts[word] < extra_cap and add(word, 1):
                    counts[word] += 1
                    added = True
        # A list item costs 4-7 tokens, so up to that much room can remain: close it by swapping single
        # occurrences for unused words that take more tokens (frequencies stay as they are).
        while total < room:
            unused = [w for w in uncommon if counts[w] == 0]
            swaps = [(word_len[new] - word_len[old], old, new) for old in uncommon if counts[old] == 1
                     for new in unused if 0 < word_len[new] - word_len[old] <= room - total]
            if not swaps:
                break
            gain, old, new = max(swaps)
            chosen[chosen.index(old)] = new
            counts[old], counts[new] = 0, 1
            total += gain
        rng.shuffle(chosen)
        nums, words = _numbered(chosen)
        pieces = [p for pair in zip(nums, words) for p in pair]
        content, ids = frame(tok, head, pieces, tok.encode_many(pieces), tail, prefix)
        return make_sample(self, cell, seed, index, content, ids, list(common), self.max_new_tokens(cell, tok),
                           tok=tok, answer_prefix=tok.answer_prefix_ids(prefix)[0],
                           freq_common=freq_c, freq_uncommon=freq_u, list_length=len(chosen),
                           worked_example=with_example)

    def score(self, sample: Sample, text: str) -> float:
        return string_match_all(text, sample.answers)

