"""Bad input gets one clear error naming the value and what is accepted; user sources work."""

import json

import pytest

from longquant_checks import Cell, SourceError, TextSources, UnknownValueError, get_task, load_language, plan_cells
from longquant_checks.schema import parse_bucket
from longquant_checks.text.languages import LanguageDataError, validate_language_data


def test_unknown_task_names_the_accepted_ones():
    with pytest.raises(UnknownValueError, match=r"unknown task 'niah_single_9'.*niah_single_1.*kv_recall"):
        get_task("niah_single_9")


def test_unknown_language_and_bucket():
    with pytest.raises(LanguageDataError, match=r"unknown language 'xx'; accepted: cs, da"):
        load_language("xx")
    with pytest.raises(UnknownValueError, match=r"unknown bucket '3K'; accepted: 1K, 2K, 4K"):
        parse_bucket("3K")
    with pytest.raises(UnknownValueError, match="unknown language 'english'"):
        plan_cells(["vt"], ["1K"], ["english"])
    assert parse_bucket("4k") == parse_bucket("4096") == parse_bucket(4096) == 4096


def test_plan_skips_buckets_beyond_the_model_with_a_reason():
    planned = plan_cells(["vt"], ["4K", "16K"], ["en"], max_model_len=8192)
    assert [p.cell.id for p in planned] == ["vt-4K-en", "vt-16K-en"]
    assert planned[0].skip_reason is None
    assert "exceeds the model's max length 8192" in planned[1].skip_reason


def test_corpus_folder_errors(tmp_path, tok):
    task = get_task("niah_single_2", TextSources(corpora={"en": str(tmp_path / "missing")}))
    with pytest.raises(SourceError, match="corpus folder for language 'en' not found"):
        task.generate(Cell("niah_single_2", 1024, "en"), tok, 1, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    task = get_task("niah_single_2", TextSources(corpora={"en": str(empty)}))
    with pytest.raises(SourceError, match="has no .txt files"):
        task.generate(Cell("niah_single_2", 1024, "en"), tok, 1, 0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes("caf\xe9".encode("latin-1"))
    task = get_task("niah_single_2", TextSources(corpora={"en": str(bad)}))
    with pytest.raises(SourceError, match=r"a.txt is not valid UTF-8"):
        task.generate(Cell("niah_single_2", 1024, "en"), tok, 1, 0)
    with pytest.raises(UnknownValueError, match="unknown language in corpora 'klingon'"):
        TextSources(corpora={"klingon": str(bad)})


def test_user_corpus_becomes_the_haystack(tmp_path, tok):
    (tmp_path / "doc.txt").write_text("Le chat dort sur le canapé. Il pleut depuis ce matin.\nLa réunion est reportée.",
                                      encoding="utf-8")
    task = get_task("niah_single_2", TextSources(corpora={"fr": str(tmp_path)}))
    sample = task.generate(Cell("niah_single_2", 1024, "fr"), tok, 1, 0)[0]
    assert "Le chat dort sur le canapé." in sample.prompt_text
    assert sample.n_tokens + sample.max_new_tokens >= 0.995 * 1024
    builtin = get_task("niah_single_2").generate(Cell("niah_single_2", 1024, "fr"), tok, 1, 0)[0]
    assert task.sources_fingerprint("fr") != get_task("niah_single_2").sources_fingerprint("fr")
    assert sample.prompt_sha256 != builtin.prompt_sha256


def test_qa_file_records_and_errors(tmp_path, tok):
    path = tmp_path / "qa.jsonl"
    records = [
        {"documents": ["The lighthouse keeper of Vellmar is Ada Quist."], "question": "Who keeps the Vellmar lighthouse?",
         "answers": ["Ada Quist"]},
        {"documents": ["The bakery on Rue Nord opens at dawn.", "Its owner is Paul Renn."],
         "question": "Who owns the bakery on Rue Nord?", "answers": ["Paul Renn"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    task = get_task("qa_1", TextSources(qa_file=str(path)))
    samples = task.generate(Cell("qa_1", 1024, "en"), tok, 2, 0)
    assert samples[0].answers == ["Ada Quist"] and samples[1].answers == ["Paul Renn"]
    assert "Who owns the bakery on Rue Nord?" in samples[1].prompt_text
    assert samples[1].n_tokens + samples[1].max_new_tokens >= 0.995 * 1024
    path.write_text(json.dumps({"documents": "not a list", "question": "q", "answers": ["a"]}), encoding="utf-8")
    with pytest.raises(SourceError, match=r"qa.jsonl:1: 'documents' must be a non-empty list"):
        get_task("qa_1", TextSources(qa_file=str(path))).generate(Cell("qa_1", 1024, "en"), tok, 1, 0)
    with pytest.raises(SourceError, match="QA file not found"):
        get_task("qa_1", TextSources(qa_file=str(tmp_path / "nope.jsonl"))).generate(Cell("qa_1", 1024, "en"), tok, 1, 0)


def test_language_validator_names_the_problem():
    data = json.loads(json.dumps(load_language("en").data))
    data["niah"]["number"]["needle"] = "One of the special magic numbers for {key} is {valeu}."
    with pytest.raises(LanguageDataError, match=r"niah.number.needle has placeholders \['key', 'valeu'\]"):
        validate_language_data(data, "en.json")
    data = json.loads(json.dumps(load_language("en").data))
    data["haystack"]["prose"][3] = "It cost 5 pounds."
    with pytest.raises(LanguageDataError, match="haystack.prose entry 'It cost 5 pounds.' contains a digit"):
        validate_language_data(data, "en.json")
