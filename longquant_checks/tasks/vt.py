"""Variable tracking (RULER vt): follow a chain of assignments hidden in noise; one worked example first."""

from __future__ import annotations

import random
import string

from ..schema import Cell, Sample
from ..text.fitting import Insert, assemble, fixed_cost
from ..text.languages import Language
from ..text.tokens import PromptTokenizer
from .base import Task, make_sample, register_task, spread_depths, string_match_all

NUM_HOPS = 4  # RULER: 1 chain, 4 hops -> 5 variables
_EXAMPLE_NOISE_UNITS = 12


def _chain(rng: random.Random, taken: set[str]) -> tuple[list[str], str]:
    names: list[str] = []
    while len(names) < NUM_HOPS + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in taken and name not in names:
            names.append(name)
    taken.update(names)
    return names, str(rng.randrange(10_000, 100_000))


def _statements(names: list[str], value: str) -> list[str]:
    return [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]


@register_task
class VariableTracking(Task):
    name = "vt"
    family = "vt"
    version = "2"
    metric = "all"
    description = "variable tracking: 1 chain of 4 hops in noise, all 5 variables holding the value must be named"

    def max_new_tokens(self, cell: Cell, tok: PromptTokenizer) -> int:
        # RULER: 30 after an answer prefix (five "VAR XXXXX" names are ~25 tokens). Without one, chat models
        # restate the question first; SmolLM2 reached 64 tokens (cut short) listing names (docs/tasks.md).
        return 64 if tok.style.answer_prefix and tok.frame.prefill else 128

    def build(self, cell: Cell, tok: PromptTokenizer, language: Language, seed: int, index: int) -> Sample:
        rng = self.rng(cell, seed, index)
        taken: set[str] = set()
        ex_names, ex_value = _chain(rng, taken)
        names, value = _chain(rng, taken)
        noise = language.pool("haystack", "noise")
        sep = language.sentence_join
        # The worked example: a short noise text with its own chain, the question and the answer.
        example_units = [noise[i % len(noise)] for i in range(_EXAMPLE_NOISE_UNITS)]
        ex_slots = sorted(rng.sample(range(_EXAMPLE_NOISE_UNITS + 1), NUM_HOPS + 1))
        for offset, (slot, stmt) in enumerate(zip(ex_slots, _statements(ex_names, ex_value))):
            example_units.insert(slot + offset, stmt)
        example = (
            language.fill("vt", "instruction") + "\n\n" + sep.join(example_units) + "\n\n"
            + language.fill("vt", "question", value=ex_value) + "\n"
            + language.fill("vt", "answer", count=len(ex_names), value=ex_value,
                            variables=" ".join(f"VAR {n}" for n in ex_names))
        )
        head = example + "\n\n" + language.fill("vt", "instruction") + "\n\n"
        tail = "\n\n" + language.fill("vt", "question", value=value)
        inserts = [Insert(sep + stmt, d, tag=f"hop:{k}")
                   for k, (stmt, d) in enumerate(zip(_statements(names, value), spread_depths(rng, NUM_HOPS + 1)))]
        filler = self.sources.haystack(language, "noise").units(rng)
        budget = cell.bucket - self.max_new_tokens(cell, tok)
        # RULER's answer prefix: the worked example's answer up to its list of variables.
        prefix = language.template("vt", "answer").split("{variables}")[0].format(count=len(names), value=value)
        prefix = prefix.rstrip()
        with_example = budget - fixed_cost(tok, head, tail, prefix) >= 0.4 * cell.bucket
        if not with_example:  # scripts that take many tokens per character, at 1K-2K: no room for it
            head = language.fill("vt", "instruction") + "\n\n"
        built = assemble(tok, head, tail, inserts, filler, budget, answer_prefix=prefix)
        return make_sample(self, cell, seed, index, built.content, built.token_ids, names,
                           self.max_new_tokens(cell, tok), tok=tok, answer_prefix=built.answer_prefix,
                           value=value, positions=built.positions,
                           context_tokens=built.context_tokens, filler_end=built.last_unit,
                           worked_example=with_example)

    def score(self, sample: Sample, text: str) -> float:
        return string_match_all(text, sample.answers)
