"""All 26 OneRuler languages have complete, valid data, and scripts without spaces or RTL work."""

import pytest

from longquant_checks import LANGUAGES, Cell, get_task, load_language


def test_the_26_oneruler_languages():
    assert len(LANGUAGES) == 26
    assert set(LANGUAGES) == set("cs da de en es fa fi fr hi hu it ja ko nl no pl pt ru sr st sv sw ta uk vi zh".split())


@pytest.mark.parametrize("code", LANGUAGES)
def test_language_file_is_complete_and_native(code):
    lang = load_language(code)  # validates every template, placeholder and pool
    assert lang.code == code
    prose = lang.pool("haystack", "prose")
    assert len(set(prose)) >= 100
    if code != "en":  # written natively, not English with swapped words
        english = set(load_language("en").pool("haystack", "prose"))
        assert not english & set(prose)
        assert lang.fill("niah", "number", "instruction") != load_language("en").fill("niah", "number", "instruction")


def test_scripts_without_spaces_and_right_to_left(tok):
    assert load_language("zh").sentence_join == "" and load_language("ja").sentence_join == ""
    assert load_language("fa").direction == "rtl"
    for code in ("zh", "ja", "fa"):
        sample = get_task("niah_single_2").generate(Cell("niah_single_2", 2048, code), tok, 1, 3)[0]
        assert sample.answers[0] in sample.prompt_text
        assert sample.n_tokens + sample.max_new_tokens >= 0.995 * 2048
