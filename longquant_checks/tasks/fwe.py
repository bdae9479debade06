"""Frequent words extraction (RULER fwe): the 3 most frequent coded words of a Zipf-distributed text.

As RULER: 2000 random 6-letter coded words, counts proportional to rank^-2 (Zipf alpha=2), the top
ranked word replaced by the noise token '....', answers = ranks 2-4. The text is language-neutral;
instruction and question are in the cell's language. To fill the bucket exactly, after the Zipf
counts stop fitting, words with a count of zero are added once each (never changing the top 3).
"""

from __future__ import annotations

import string

import numpy as np

from ..schema import Cell, Sample
from ..text.fitting import fixed_cost, frame
from ..text.languages import Language
from ..text.tokens import PromptTokenizer
from .base import Task, make_sample, register_task, string_match_all

VOCAB_SIZE = 2000
WORD_LENGTH = 6
ALPHA = 2.0
NOISE_WORD = "...."


@register_task
class FrequentWordsExtraction(Task):
    name = "fwe"
    family = "fwe"
    version = "1"
    metric = "all"
    description = "frequent words extraction: the 3 most frequent coded words (Zipf alpha=2) of a coded text"

    def max_new_tokens(self, cell: Cell, tok: PromptTokenizer) -> int:
        return 64  # RULER: 50 after an answer prefix

    def build(self, cell: Cell, tok: PromptTokenizer, language: Language, seed: int, index: int) -> Sample:
        rng = self.rng(cell, seed, index)
        vocab: list[str] = []
        seen: set[str] = set()
        while len(vocab) < VOCAB_SIZE:
            word = "".join(rng.choices(string.ascii_lowercase, k=WORD_LENGTH))
            if word not in seen:
                seen.add(word)
                vocab.append(word)
        vocab[0] = NOISE_WORD
        head = language.fill("fwe", "instruction") + "\n\n"
        tail = "\n\n" + language.fill("fwe", "question")
        room = cell.bucket - self.max_new_tokens(cell, tok) - fixed_cost(tok, head, tail)
        vocab_ids = tok.encode_many([f" {w}" for w in vocab], cache=False)
        lengths = np.array([len(ids) for ids in vocab_ids])
        weights = np.arange(1, VOCAB_SIZE + 1, dtype=float) ** -ALPHA
        weights /= weights.sum()

        def counts_for(num_words: int) -> np.ndarray:
            return np.floor(num_words * weights).astype(int)

        lo, hi = 0, room  # largest total word count whose Zipf counts fit the room
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if int(counts_for(mid) @ lengths) <= room:
                lo = mid
            else:
                hi = mid - 1
        counts = counts_for(lo)
        used = int(counts @ lengths)
        for k in range(VOCAB_SIZE - 1, 3, -1):  # fill the gap with unused words once each
            if counts[k] == 0 and used + lengths[k] <= room:
                counts[k] = 1
                used += int(lengths[k])
        words = [vocab[k] for k in range(VOCAB_SIZE) for _ in range(counts[k])]
        rng.shuffle(words)
        word_ids = dict(zip(vocab, vocab_ids))
        pieces = [f" {w}" for w in words]
        body_ids = [word_ids[w] for w in words]
        content, ids = frame(tok, head, pieces, body_ids, tail)
        answers = vocab[1:4]
        return make_sample(self, cell, seed, index, content, ids, answers, self.max_new_tokens(cell, tok), tok=tok,
                           counts_top=[int(c) for c in counts[:5]], num_words=len(words))

    def score(self, sample: Sample, text: str) -> float:
        return string_match_all(text, sample.answers)
