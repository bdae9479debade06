"""none_match (niah_none's strict scorer) in all 26 languages: a none word counts as a whole word only,
except in zh/ja (no spaces between words), where it counts as a substring."""

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longquant_checks.schema import Cell, Sample
from longquant_checks.tasks.base import get_task, none_match
from longquant_checks.text.languages import LANGUAGES, load_language

UNSPACED = {"ja", "zh"}
# niah_none's answers are the language's `none` list (tasks/niah.py: `answers = list(language.none)`).
NONE_WORDS = {code: list(load_language(code).none) for code in LANGUAGES}
CASES = [(code, word) for code in LANGUAGES for word in NONE_WORDS[code]]


def _letters(code: str) -> str:
    """Letters and combining marks of the language's own script, from its word pools."""
    lang = load_language(code)
    words = lang.pool("words", "nouns") + lang.pool("words", "adjectives")
    return "".join(sorted({ch for w in words for ch in w if unicodedata.category(ch)[0] in "LM"}))


def _sentences(code: str) -> list[str]:
    """Native prose without digits (a digit alone fails the answer)."""
    return [s for s in load_language(code).pool("haystack", "prose") if not any(ch.isdigit() for ch in s)]


LETTERS = {code: _letters(code) for code in LANGUAGES}
SENTENCES = {code: _sentences(code) for code in LANGUAGES}
BEFORE = ["", " ", "\n", ": ", "«", "„", "\"", "(", "**", "_", "「", "— "]
AFTER = ["", " ", ".", "!", "\n", "»", "“", "\"", ")", "**", "_", "」", "。", "।"]


@pytest.mark.parametrize("code,word", CASES)
@given(data=st.data())
def test_a_none_word_standing_alone_scores_1(code, word, data):
    lang_sentence = data.draw(st.sampled_from(SENTENCES[code]))
    case = data.draw(st.sampled_from([str, str.upper, str.capitalize]))
    space = data.draw(st.sampled_from([" ", "  ", "\n"]))  # inside multi-word none words
    answer = case(word).replace(" ", space)
    before = data.draw(st.sampled_from(BEFORE))
    after = data.draw(st.sampled_from(AFTER))
    lead = data.draw(st.sampled_from(["", lang_sentence + " "]))
    tail = data.draw(st.sampled_from(["", " " + lang_sentence]))
    text = lead + before + answer + after + tail
    assert none_match(text, NONE_WORDS[code]) == 1.0, text
    assert none_match(text, [word]) == 1.0, text


@pytest.mark.parametrize("code,word", [(c, w) for c, w in CASES if c not in UNSPACED])
@given(data=st.data())
def test_a_none_word_inside_another_word_scores_0(code, word, data):
    glue = st.text(alphabet=LETTERS[code], max_size=3)
    before, after = data.draw(glue), data.draw(glue)
    if not before and not after:
        after = data.draw(glue.filter(bool))
    text = data.draw(st.sampled_from(["", "— "])) + before + word + after + data.draw(st.sampled_from(["", "."]))
    # Only this word: the glued token may itself be another none word (da "ingen" + "ting" = "ingenting").
    assert none_match(text, [word]) == 0.0, text


@pytest.mark.parametrize("code,word", [(c, w) for c, w in CASES if c in UNSPACED])
@given(data=st.data())
def test_zh_ja_none_words_count_as_substrings(code, word, data):
    glue = st.text(alphabet=LETTERS[code], max_size=3)
    text = data.draw(glue) + word + data.draw(glue)  # 没有提到, 存在しない: still a negation
    assert none_match(text, NONE_WORDS[code]) == 1.0, text


@pytest.mark.parametrize("code,word", CASES)
@given(digit=st.characters(categories=["Nd"]), where=st.sampled_from(["before", "after"]))
def test_any_digit_fails_the_answer(code, word, digit, where):
    text = f"{digit} {word}" if where == "before" else f"{word}, {digit}"
    assert none_match(text, NONE_WORDS[code]) == 0.0


@pytest.mark.parametrize("text,code,expected", [
    ("планета", "ru", 0.0),  # нет inside "planet"
    ("Это планета.", "ru", 0.0),
    ("Нет.", "ru", 1.0),
    ("кінематограф", "uk", 0.0),  # нема inside "cinematography"
    ("Нема.", "uk", 1.0),
    ("khôngkhí", "vi", 0.0),  # "không khí" (air) with the space lost: one token, not the word không
    ("Tôi không biết.", "vi", 1.0),  # không standing alone counts, even as a plain negation
    ("Không có.", "vi", 1.0),
    ("nonetheless", "en", 0.0),
    ("Nonetheless I think so.", "en", 0.0),
    ("none", "en", 1.0),
    ("_none_", "en", 1.0),  # underscore is not a letter: Markdown emphasis
    ("none 7", "en", 0.0),
    ("nincsenek", "hu", 0.0),  # hu: "nincs" + plural ending is another word
    ("Ha ho.", "st", 1.0),
    ("ha hox", "st", 0.0),  # ASCII but multi-word: was a plain substring
    ("Ei\nmitään.", "fi", 1.0),  # any whitespace inside a multi-word none word
    ("க்இல்லை", "ta", 0.0),  # preceded by a virama (a combining mark, not \w)
    ("இல்லைா", "ta", 0.0),  # followed by a vowel sign
    ("இல்லை.", "ta", 1.0),
    ("कोई नहीं।", "hi", 1.0),
    ("हिकोई नहीं", "hi", 0.0),
    ("هیچ‌کس", "fa", 1.0),  # ZWNJ separates Persian morphemes: هیچ + کس "nobody"
    ("هیچکدام", "fa", 1.0),  # the listed هیچ‌کدام, written without its ZWNJ
    ("없음", "ko", 1.0),
    ("끝없음", "ko", 0.0),  # "endlessness"
    ("答案是无", "zh", 1.0),
    ("文中没有提到。", "zh", 1.0),
    ("存在しない", "ja", 1.0),
])
def test_regressions(text, code, expected):
    assert none_match(text, NONE_WORDS[code]) == expected


def test_niah_none_scores_with_the_language_none_words_and_a_new_scorer_version():
    task = get_task("niah_none")
    assert task.scorer_version == "2" and task.version == get_task("niah_single_1").version  # the scorer alone
    assert get_task("niah_single_1").scorer_version == "1"
    sample = Sample(id="x", cell=Cell("niah_none", 1024, "ru"), messages=[], answers=NONE_WORDS["ru"],
                    prompt_token_ids=[], max_new_tokens=128)
    assert task.score(sample, "Нет.") == 1.0
    assert task.score(sample, "Это планета.") == 0.0
