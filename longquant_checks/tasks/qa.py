"""Question answering over many documents (RULER qa_1 single-hop, qa_2 two-hop).

RULER draws documents from SQuAD (qa_1) and HotpotQA (qa_2); those cannot be downloaded everywhere,
so we write the documents from generated facts about fictitious organisations, people and cities,
in each language's own sentences: a gold document holds the answer (two for qa_2, joined by a bridge
entity), the rest are distractor documents about other entities. The entity asked about never
appears in a distractor, so the answer is unique. A user can supply real data instead: a JSONL file
of {"documents": [...], "question": ..., "answers": [...]} (TextSources.qa_file); then the other
records' documents serve as distractors, as RULER does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import SourceError
from ..schema import Cell, Sample
from ..text.fitting import FitError, fixed_cost, frame
from ..text.languages import Language
from ..text.tokens import PromptTokenizer
from .base import Task, depth_for, make_sample, register_task, string_match_part

_DOC_SUBJECTS = ("person", "org", "city")


@dataclass(frozen=True)
class QARecord:
    documents: tuple[str, ...]
    question: str
    answers: tuple[str, ...]


def load_qa_file(path: str | Path) -> list[QARecord]:
    """Read a JSONL file of {documents, question, answers}; errors name the line and the field."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SourceError(f"QA file not found: {p} (expected JSONL with documents, question, answers)")
    records: list[QARecord] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SourceError(f"QA file {p} is not valid UTF-8 (byte {exc.start})") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{p}:{lineno}: not valid JSON: {exc.msg}") from exc
        docs, question, answers = obj.get("documents"), obj.get("question"), obj.get("answers")
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) and d.strip() for d in docs):
            raise SourceError(f"{p}:{lineno}: 'documents' must be a non-empty list of strings")
        if not isinstance(question, str) or not question.strip():
            raise SourceError(f"{p}:{lineno}: 'question' must be a non-empty string")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise SourceError(f"{p}:{lineno}: 'answers' must be a non-empty list of strings")
        records.append(QARecord(tuple(docs), question, tuple(answers)))
    if len(records) < 2:
        raise SourceError(f"QA file {p} needs at least 2 records (other records' documents are the distractors)")
    return records


class QATask(Task):
    family = "qa"
    version = "2"
    metric = "part"
    hops: int

    def max_new_tokens(self, cell: Cell, tok: PromptTokenizer) -> int:
        # RULER: 32 with "Answer:" prefilled; chat models often answer in a sentence (SmolLM2: up to 52).
        return 96

    def sources_fingerprint(self, language: str) -> str:
        base = super().sources_fingerprint(language)
        if not self.sources.qa_file:
            return base
        path = Path(self.sources.qa_file).expanduser()
        if not path.is_file():
            raise SourceError(f"QA file not found: {path} (expected JSONL with documents, question, answers)")
        return hashlib.sha256(base.encode() + path.read_bytes()).hexdigest()

    # -- synthetic documents ---------------------------------------------------------------
    def _entity(self, rng: random.Random, language: Language, kind: str, exclude: set[str]) -> str:
        while True:
            name = rng.choice(language.pool("names", kind))
            if name not in exclude:
                return name

    def _document(self, rng: random.Random, language: Language, subject_kind: str, subject: str,
                  exclude: set[str], fixed: list[str], avoid: set[tuple[str, str]]) -> str:
        """A short document about `subject`: the `fixed` sentences plus 1-2 other facts and a filler.

        Facts whose (subject, answer) types are in `avoid` are left out, so a document never holds a
        second fact of the kind the question asks about."""
        facts = [f for f in language.data["qa"]["facts"]
                 if f["subject"] == subject_kind and (f["subject"], f["answer"]) not in avoid]
        sentences = list(fixed)
        for fact in rng.sample(facts, min(len(facts), rng.randint(1, 2))):
            answer = self._entity(rng, language, fact["answer"], exclude | {subject})
            sentences.append(fact["text"].format(subject=subject, answer=answer))
        sentences.append(rng.choice(language.data["qa"]["filler"]).format(subject=subject))
        rng.shuffle(sentences)
        return language.sentence_join.join(sentences)

    def _distractors(self, rng: random.Random, language: Language, exclude: set[str]) -> Iterator[str]:
        while True:
            kind = rng.choice(_DOC_SUBJECTS)
            subject = self._entity(rng, language, kind, exclude)
            yield self._document(rng, language, kind, subject, exclude, [], set())

    def _gold(self, rng: random.Random, language: Language, index: int) -> tuple[list[str], str, list[str], set[str]]:
        """Gold documents, question, answers, and the entities distractors must not mention."""
        qa = language.data["qa"]
        if self.hops == 1:
            fact = qa["facts"][index % len(qa["facts"])]
            subject = self._entity(rng, language, fact["subject"], set())
            answer = self._entity(rng, language, fact["answer"], {subject})
            doc = self._document(rng, language, fact["subject"], subject, {answer},
                                 [fact["text"].format(subject=subject, answer=answer)],
                                 {(fact["subject"], fact["answer"])})
            return [doc], fact["question"].format(subject=subject), [answer], {subject}
        item = qa["two_hop"][index % len(qa["two_hop"])]
        subject = self._entity(rng, language, item["subject"], set())
        bridge = self._entity(rng, language, "person", {subject})
        answer = self._entity(rng, language, item["answer"], {subject, bridge})
        avoid = {(item["subject"], "person"), ("person", item["answer"])}
        doc1 = self._document(rng, language, item["subject"], subject, {bridge, answer},
                              [item["bridge"].format(subject=subject, bridge=bridge)], avoid)
        doc2 = self._document(rng, language, "person", bridge, {subject, answer},
                              [item["target"].format(bridge=bridge, answer=answer)], avoid)
        return [doc1, doc2], item["question"].format(subject=subject), [answer], {subject, bridge}

    # -- user records ---------------------------------------------------------------------------
    def _from_file(self, rng: random.Random, index: int) -> tuple[list[str], str, list[str], Iterator[str]]:
        records = load_qa_file(self.sources.qa_file)  # type: ignore[arg-type]
        record = records[index % len(records)]
        others = [d for r in records if r is not record for d in r.documents if d not in record.documents]
        if not others:
            raise SourceError(f"QA file {self.sources.qa_file}: no distractor documents besides record {index}")

        def distractors() -> Iterator[str]:
            while True:
                order = list(others)
                rng.shuffle(order)
                yield from order

        return list(record.documents), record.question, list(record.answers), distractors()

    # -- assembly -----------------------------------------------------------------------------
    def build(self, cell: Cell, tok: PromptTokenizer, language: Language, seed: int, index: int) -> Sample:
        rng = self.rng(cell, seed, index)
        if self.sources.qa_file:
            gold, question, answers, distractors = self._from_file(rng, index)
        else:
            gold, question, answers, exclude = self._gold(rng, language, index)
            distractors = self._distractors(rng, language, exclude)
        instruction = language.fill("qa", "instruction")
        # Every piece starts with its whitespace and ends without any, so the text form re-tokenizes
        # to the same ids (a trailing "\n\n" tokenizes differently alone than before a word).
        head = instruction + "\n\n" + language.fill("qa", "documents_intro")
        tail = "\n\n" + instruction + "\n\n" + language.fill("qa", "question", question=question)
        budget = cell.bucket - self.max_new_tokens(cell, tok)
        # RULER's answer prefix ("Answer:"), in the language's word: the label of its worked-example answers.
        prefix = re.split(r"(?<=[:：])", language.template("vt", "answer"), maxsplit=1)[0].strip()
        fixed = fixed_cost(tok, head, tail, prefix)

        def label(i: int) -> str:
            return "\n\n" + language.fill("qa", "document_label", index=i)

        gold = ["\n" + d.strip() for d in gold]
        gold_ids = tok.encode_many(gold, cache=False)
        docs: list[tuple[str, tuple[int, ...]]] = []  # distractors, in order
        total = fixed + sum(len(ids) for ids in gold_ids)
        total += sum(len(tok.encode_many([label(i)])[0]) for i in range(1, len(gold) + 1))
        if total > budget:
            raise FitError(f"the question and its gold documents take {total} tokens, more than the {budget} available")
        pending: deque[tuple[str, tuple[int, ...]]] = deque()
        while total < budget:  # add whole distractors; cut the last one at a word boundary
            if not pending:
                texts = ["\n" + next(distractors).strip() for _ in range(64)]
                pending.extend(zip(texts, tok.encode_many(texts, cache=False)))
            text, ids = pending.popleft()
            label_len = len(tok.encode_many([label(len(gold) + len(docs) + 1)])[0])
            space = budget - total - label_len
            if len(ids) > space:
                # the closest word-boundary cut of this document or one of the next few; if not even a word fits
                # after another label, the last document goes on instead (no label needed)
                nexts = [text, *(t for t, _ in itertools.islice(pending, 15))]
                cut_ids, cut_text, _ = tok.best_word_cut(nexts, space)
                if cut_ids:
                    docs.append((cut_text, cut_ids))
                elif docs:
                    more_ids, more_text, _ = tok.best_word_cut([" " + t.strip() for t in nexts], budget - total)
                    last_text, last_ids = docs[-1]
                    docs[-1] = (last_text + more_text, tuple(last_ids) + tuple(more_ids))
                break
            docs.append((text, ids))
            total += label_len + len(ids)

        # Gold documents at the sample's depth (the second, for two-hop, at an independent depth).
        n_full = len(docs) - 1 if docs else 0  # the cut document stays last
        gold_depths = [depth_for(index)] + [rng.randrange(40) / 39 for _ in gold[1:]]
        order: list[tuple[str, tuple[int, ...], bool]] = [(t, i, False) for t, i in docs[:n_full]]
        for (text, ids), depth in sorted(zip(zip(gold, gold_ids), gold_depths), key=lambda x: x[1], reverse=True):
            order.insert(round(depth * n_full), (text, ids, True))
        order.extend((t, i, False) for t, i in docs[n_full:])
        pieces_text: list[str] = []
        pieces_ids: list[tuple[int, ...]] = []
        gold_positions = []
        for k, (text, ids, is_gold) in enumerate(order, 1):
            lab = label(k)
            pieces_text += [lab, text]
            pieces_ids += [tok.encode_many([lab])[0], ids]
            if is_gold:
                gold_positions.append(k)
        content, token_ids = frame(tok, head, pieces_text, pieces_ids, tail, prefix)
        return make_sample(self, cell, seed, index, content, token_ids, answers, self.max_new_tokens(cell, tok),
                           tok=tok, answer_prefix=tok.answer_prefix_ids(prefix)[0],
                           question=question, gold_documents=gold_positions, num_documents=len(order),
                           depth=gold_depths[0], source="file" if self.sources.qa_file else "synthetic")

    def score(self, sample: Sample, text: str) -> float:
        return string_match_part(text, sample.answers)


@register_task
class QASingleHop(QATask):
    name = "qa_1"
    hops = 1
    description = "single-hop QA over many documents (synthetic facts, or a user JSONL); any answer alias counts"


@register_task
class QATwoHop(QATask):
    name = "qa_2"
    hops = 2
    description = "two-hop QA: the answer needs two documents joined by a bridge entity"

