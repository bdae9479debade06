"""Haystack sources: endless streams of text units (sentences) in a language.

Built-in sources: RULER's repetitive `noise` (from the language files) and native `prose` (real documents shipped
in text/prose/, then the language file's own sentences); a user can point a language at a folder of UTF-8 text
files (their own documents) with `corpus_source`.
Each unit carries its leading separator, so units can be concatenated and tokenized one by one.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import SourceError
from .languages import Language, load_language

_SENTENCE_END = re.compile(r"(?<=[.!?…؟।])\s+|(?<=[。！？])")
_MAX_UNIT_CHARS = 400


@dataclass(frozen=True)
class HaystackSource:
    """A pool of sentences and how to stream them."""

    name: str
    sentences: tuple[str, ...]
    separator: str
    order: str  # "cycle" (in order, RULER noise), "shuffle" (permutations), "contiguous" (from a random start)
    fingerprint: str

    def units(self, rng: random.Random) -> Iterator[str]:
        n = len(self.sentences)
        if self.order == "cycle":
            i = 0
            while True:
                yield self.separator + self.sentences[i % n]
                i += 1
        elif self.order == "shuffle":
            while True:
                order = list(range(n))
                rng.shuffle(order)
                for i in order:
                    yield self.separator + self.sentences[i]
        else:
            i = rng.randrange(n)
            while True:
                yield self.separator + self.sentences[i % n]
                i += 1


def _fingerprint(parts: list[str]) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


@lru_cache(maxsize=None)
def shipped_prose(code: str) -> tuple[str, ...]:
    """The language's shipped prose (text/prose/<code>.txt.gz: real documents under open licenses, one sentence a
    line, in document order; text/prose/SOURCES.md lists them), or () where there is none."""
    path = Path(str(resources.files("longquant_checks.text") / "prose" / f"{code}.txt.gz"))
    if not path.is_file():
        return ()
    return tuple(line for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines() if line)


def builtin_source(language: Language, kind: str) -> HaystackSource:
    return _builtin_source(language.code, language.fingerprint, kind)


@lru_cache(maxsize=None)
def _builtin_source(code: str, fingerprint: str, kind: str) -> HaystackSource:
    """noise: RULER's few repeated sentences, in a cycle. prose: the shipped documents, then the language file's own
    sentences, read contiguously from a random start: no sentence repeats before every one was used, and a haystack
    reads as documents, not as a shuffle of sentences."""
    language = load_language(code)
    if kind == "noise":
        sentences = language.pool("haystack", kind)
        order = "cycle"
    else:
        shipped = shipped_prose(language.code)
        seen = set(shipped)
        sentences = shipped + tuple(s for s in language.pool("haystack", kind) if s not in seen)
        order = "contiguous"
    fp = _fingerprint([language.code, kind, *sentences])
    return HaystackSource(f"{kind}:{language.code}", sentences, language.sentence_join, order, fp)


def split_sentences(text: str) -> list[str]:
    """Sentences of a text (Latin, Cyrillic, Devanagari, Arabic and CJK end marks); long runs are chunked."""
    out: list[str] = []
    for paragraph in text.splitlines():
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            sentence = sentence.strip()
            while len(sentence) > _MAX_UNIT_CHARS:  # no end mark for a long stretch: cut at a space
                cut = sentence.rfind(" ", 0, _MAX_UNIT_CHARS)
                cut = cut if cut > 0 else _MAX_UNIT_CHARS
                out.append(sentence[:cut].strip())
                sentence = sentence[cut:].strip()
            if sentence:
                out.append(sentence)
    return out


def corpus_source(folder: str | Path, language: Language) -> HaystackSource:
    """Sentences from every *.txt file under `folder` (sorted, UTF-8), streamed contiguously."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SourceError(f"corpus folder for language {language.code!r} not found: {root} (give a folder of UTF-8 .txt files)")
    files = sorted(p for p in root.rglob("*.txt") if p.is_file())
    if not files:
        raise SourceError(f"corpus folder {root} for language {language.code!r} has no .txt files")
    sentences: list[str] = []
    digest = hashlib.sha256()
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"corpus file {path} is not valid UTF-8 (byte {exc.start}); re-encode it, e.g. `iconv -t UTF-8`"
            ) from exc
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00" + raw)
        sentences.extend(split_sentences(text))
    if not sentences:
        raise SourceError(f"corpus folder {root} for language {language.code!r} contains no text")
    return HaystackSource(f"corpus:{root.name}", tuple(sentences), language.sentence_join, "contiguous",
                          digest.hexdigest())
