"""Properties of generated prompts with the real SmolLM2 tokenizer, over seeds, buckets, languages, families."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from hypothesis import given, reject
from hypothesis import strategies as st

import longquant_checks
from longquant_checks import BUCKETS, LANGUAGES, Cell, get_task, load_language, task_names
from longquant_checks.schema import hash_token_ids
from longquant_checks.text.fitting import FitError

NIAH = [t for t in task_names() if t.startswith("niah")]
seeds = st.integers(0, 2**31 - 1)
indexes = st.integers(0, 60)
buckets = st.sampled_from(list(BUCKETS.values()))
short_buckets = st.sampled_from([1024, 2048, 4096, 8192])
# Completeness of the 26 language files is tested in test_languages.py; here, every file present.
AVAILABLE = [code for code in LANGUAGES if (Path(longquant_checks.__file__).parent / "text/languages" / f"{code}.json").is_file()]
languages = st.sampled_from(AVAILABLE)


def build(tok, task_name, bucket, lang, seed, index):
    task = get_task(task_name)
    cell = Cell(task_name, bucket, lang)
    try:
        return task, task.build(cell, tok, load_language(lang), seed, index)
    except FitError:
        # Known: a few Tamil cells do not fit 1K in this tokenizer (see the sweep test below).
        reject() if (lang, bucket) == ("ta", 1024) else None
        raise


def check_common(tok, sample, bucket):
    total = sample.n_tokens + sample.max_new_tokens
    assert total <= bucket, f"{sample.id}: {total} tokens exceed the bucket {bucket}"
    assert total >= 0.995 * bucket, f"{sample.id}: fills only {total / bucket:.4%} of {bucket}"
    assert sample.prompt_sha256 == hash_token_ids(sample.prompt_token_ids)
    ids = sample.prompt_token_ids
    assert tuple(ids[: len(tok.frame.prefix_ids)]) == tok.frame.prefix_ids
    prefix = sample.metadata.get("answer_prefix", "")
    end = tok.frame.suffix_ids + tuple(tok.encode(prefix))  # the assistant turn starts with the answer prefix
    assert tuple(ids[len(ids) - len(end):]) == end
    # The text form, rendered and re-tokenized as a text-only server would, stays within a few tokens.
    retokenized = len(tok.encode(tok.render(sample.prompt_text) + prefix))
    assert abs(retokenized - sample.n_tokens) <= max(4, 0.003 * sample.n_tokens), (retokenized, sample.n_tokens)


@given(task_name=st.sampled_from(NIAH), bucket=buckets, lang=languages, seed=seeds, index=indexes)
def test_niah_lengths_needles_and_answers(tok, task_name, bucket, lang, seed, index):
    task, sample = build(tok, task_name, bucket, lang, seed, index)
    check_common(tok, sample, bucket)
    language = load_language(lang)
    content = sample.prompt_text
    kind = task.spec.value_kind
    for needle, pos in zip(sample.metadata["needles"], sample.metadata["positions"]):
        text = language.sentence_join + language.fill("niah", kind, "needle", key=needle["key"], value=needle["value"])
        assert content.count(text.strip()) == 1, f"needle {text!r} not present exactly once"
        ids = tok.encode(text)
        start = pos["token_start"]
        assert sample.prompt_token_ids[start:start + len(ids)].tolist() == ids, "needle ids cut or split"
        assert 0.0 <= pos["actual_depth"] <= 1.0
    if task.spec.absent:
        asked = sample.metadata["keys"][0]
        context = content[: content.rindex("\n\n")]
        assert asked not in context, "niah_none: the asked key appears in the context"
        assert all(n["key"] != asked for n in sample.metadata["needles"])
        assert sample.answers == list(language.none)
    else:
        for value in sample.answers:
            assert content.count(value) == 1, f"answer {value} not derivable exactly once"


@given(bucket=buckets, lang=languages, seed=seeds, index=indexes)
def test_vt_chain_present(tok, bucket, lang, seed, index):
    _, sample = build(tok, "vt", bucket, lang, seed, index)
    check_common(tok, sample, bucket)
    context = sample.prompt_text.split("\n\n")
    value = sample.metadata["value"]
    names = sample.answers
    body = sample.prompt_text
    assert f"VAR {names[0]} = {value}." in body
    for a, b in zip(names, names[1:]):
        assert body.count(f"VAR {b} = VAR {a}.") == 1
    assert context[-1].count(value) == 1  # the question names the value


@given(bucket=buckets, lang=languages, seed=seeds, index=indexes)
def test_cwe_answers_are_the_most_common_words(tok, bucket, lang, seed, index):
    _, sample = build(tok, "cwe", bucket, lang, seed, index)
    check_common(tok, sample, bucket)
    listing = sample.prompt_text.split("\n\n")[-2]
    words = re.findall(r"\d+\. (\S+)", listing)
    counts = Counter(words)
    assert len(words) == sample.metadata["list_length"]
    top = {w for w in sample.answers}
    least_common = min(counts[w] for w in top)
    others = max(c for w, c in counts.items() if w not in top)
    assert least_common > others


@given(bucket=buckets, lang=languages, seed=seeds, index=indexes)
def test_fwe_answers_are_the_top_three(tok, bucket, lang, seed, index):
    _, sample = build(tok, "fwe", bucket, lang, seed, index)
    check_common(tok, sample, bucket)
    coded = sample.prompt_text.split("\n\n")[1].split()
    ranked = [w for w, _ in Counter(w for w in coded if w != "....").most_common()]
    counts = Counter(coded)
    assert set(sample.answers) == set(ranked[:3])
    assert counts[sample.answers[2]] > counts[ranked[3]]


@given(task_name=st.sampled_from(["qa_1", "qa_2"]), bucket=buckets, lang=languages, seed=seeds, index=indexes)
def test_qa_answer_is_in_the_gold_documents(tok, task_name, bucket, lang, seed, index):
    _, sample = build(tok, task_name, bucket, lang, seed, index)
    check_common(tok, sample, bucket)
    assert len(sample.metadata["gold_documents"]) == (1 if task_name == "qa_1" else 2)
    content = sample.prompt_text
    assert sample.metadata["question"] in content
    # Split the context into documents by their labels; the answer must be in a gold document.
    language = load_language(lang)
    docs = {}
    for k in range(1, sample.metadata["num_documents"] + 1):
        label = "\n\n" + language.fill("qa", "document_label", index=k)
        start = content.index(label) + len(label)
        nxt = "\n\n" + language.fill("qa", "document_label", index=k + 1)
        end = content.index(nxt, start) if k < sample.metadata["num_documents"] else content.rindex("\n\n")
        docs[k] = content[start:end]
    gold = [docs[k] for k in sample.metadata["gold_documents"]]
    assert any(a in doc for a in sample.answers for doc in gold), "answer not derivable from the gold documents"


@given(bucket=buckets, lang=languages, seed=seeds, index=indexes)
def test_kv_records_present_once(tok, bucket, lang, seed, index):
    _, sample = build(tok, "kv_recall", bucket, lang, seed, index)
    check_common(tok, sample, bucket)
    language = load_language(lang)
    for pair in sample.answers:
        key, value = pair.rsplit(": ", 1)
        assert sample.prompt_text.count(language.fill("kv", "needle", key=key, value=value)) == 1
    assert len(sample.answers) == sample.metadata["pairs"] >= 1


@given(task_name=st.sampled_from(task_names()), bucket=short_buckets, lang=languages, seed=seeds, index=indexes)
def test_same_inputs_give_byte_identical_prompts(tok, task_name, bucket, lang, seed, index):
    _, first = build(tok, task_name, bucket, lang, seed, index)
    _, again = build(tok, task_name, bucket, lang, seed, index)
    assert first.prompt_token_ids == again.prompt_token_ids
    assert first.prompt_text == again.prompt_text and first.answers == again.answers
    _, other = build(tok, task_name, bucket, lang, seed + 1, index)
    assert other.prompt_sha256 != first.prompt_sha256


def test_prefix_of_a_set_equals_a_smaller_set(tok):
    task = get_task("niah_single_2")
    cell = Cell("niah_single_2", 2048, "de")
    assert [s.prompt_sha256 for s in task.generate(cell, tok, 3, 7)] == [
        s.prompt_sha256 for s in task.generate(cell, tok, 5, 7)[:3]
    ]


def test_depths_spread_evenly_over_the_grid(tok):
    task = get_task("niah_single_1")
    samples = task.generate(Cell("niah_single_1", 1024, "en"), tok, 40, 0)
    depths = sorted(round(s.metadata["depth"] * 39) for s in samples)
    assert depths == list(range(40))


def test_every_family_builds_in_every_language_at_the_smallest_bucket(tok):
    """1K is where long instructions in scripts that take many tokens per character bite. With
    SmolLM2's tokenizer a Tamil needle takes ~200 tokens, so a few Tamil cells cannot fit 1K: those
    must fail with FitError naming the cell (the plan skips them), never overflow or underfill."""
    unfit = []
    for name in task_names():
        task = get_task(name)
        for lang in AVAILABLE:
            try:
                sample = task.generate(Cell(name, 1024, lang), tok, 1, 0)[0]
            except FitError as exc:
                assert str(exc).startswith(f"{name}-1K-{lang}: ") and "needs a longer bucket" in str(exc)
                unfit.append((name, lang))
                continue
            check_common(tok, sample, 1024)
    assert {lang for _, lang in unfit} <= {"ta"}, unfit
    assert all(get_task(name).generate(Cell(name, 2048, lang), tok, 1, 0) for name, lang in unfit)


def test_assemble_stops_when_a_finite_filler_runs_out(tok):
    from longquant_checks.text.fitting import Insert, assemble

    built = assemble(tok, "Head", "\n\nTail", [Insert(" Needle.", 0.5)], iter([" one.", " two."]), 1000)
    assert built.content == "Head one. Needle. two.\n\nTail"  # both units used, needle at the middle boundary
    assert len(built.token_ids) < 1000


def test_task_order_does_not_depend_on_import_order():
    import subprocess
    import sys

    code = "import longquant_checks.tasks.cwe; from longquant_checks import task_names; print(task_names()[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "niah_single_1"
