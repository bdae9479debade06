"""Scorers: bounds, and behaviour on exact, partial and wrong answers."""

from hypothesis import given
from hypothesis import strategies as st

from longquant_checks.tasks.base import none_match, string_match_all, string_match_part
from longquant_checks.tasks.kv import pair_f1


def test_string_match_all_counts_the_fraction_found():
    refs = ["1234567", "7654321", "1111111", "2222222"]
    assert string_match_all("The numbers are 1234567, 7654321, 1111111 and 2222222.", refs) == 1.0
    assert string_match_all("The numbers are 1234567 and 7654321.", refs) == 0.5
    assert string_match_all("I don't know.", refs) == 0.0


def test_string_match_is_case_insensitive_and_ignores_control_characters():
    assert string_match_all("  THE answer: ABC-def\x07 ", ["abc-DEF"]) == 1.0
    assert string_match_all("Ｔｅｓｔ", ["test"]) == 1.0  # NFKC: full-width letters


def test_string_match_part_needs_any_reference():
    assert string_match_part("It was Leeds.", ["Leeds", "City of Leeds"]) == 1.0
    assert string_match_part("It was York.", ["Leeds", "City of Leeds"]) == 0.0


def test_none_match_is_strict():
    none = ["none"]
    assert none_match("none", none) == 1.0
    assert none_match("The answer is: None.", none) == 1.0
    assert none_match("none, but maybe 1234567", none) == 0.0  # any number fails
    assert none_match("The number is 1234567.", none) == 0.0
    assert none_match("Nonetheless I think so.", none) == 0.0  # word boundary for spaced scripts
    assert none_match("なし", ["なし"]) == 1.0
    assert none_match("答案是无", ["无"]) == 1.0
    assert none_match("٣ none", none) == 0.0  # digits of any script count as numbers


def test_pair_f1_exact_partial_wrong_and_extra():
    refs = ["red-apple: 12345", "blue-cloud: 54321"]
    assert pair_f1("red-apple: 12345\nblue-cloud: 54321", refs) == 1.0
    assert pair_f1("Sure! red-apple: 12345, blue-cloud: 54321.", refs) == 1.0
    assert pair_f1("red-apple: 12345", refs) == 2 * (1.0 * 0.5) / 1.5  # P=1, R=0.5
    assert pair_f1("red-apple: 99999\nblue-cloud: 12345", refs) == 0.0  # values swapped or wrong
    extra = pair_f1("red-apple: 12345\nblue-cloud: 54321\ngreen-hat: 11111", refs)
    assert abs(extra - 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)) < 1e-9  # a made-up record costs precision
    assert pair_f1("", refs) == 0.0


@given(text=st.text(max_size=200), refs=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_scores_stay_in_unit_interval(text, refs):
    for score in (string_match_all(text, refs), string_match_part(text, refs), none_match(text, refs)):
        assert 0.0 <= score <= 1.0


@given(pairs=st.lists(st.tuples(st.from_regex(r"[a-z]{3,8}-[a-z]{3,8}", fullmatch=True),
                                st.integers(10000, 99999)), min_size=1, max_size=30, unique_by=lambda p: p[0]),
       text=st.text(max_size=300))
def test_pair_f1_bounds_and_perfect_recall(pairs, text):
    refs = [f"{k}: {v}" for k, v in pairs]
    assert 0.0 <= pair_f1(text, refs) <= 1.0
    assert pair_f1("\n".join(refs), refs) == 1.0
