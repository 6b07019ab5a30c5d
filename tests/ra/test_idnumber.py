"""GB 11643 resident ID numbers: check character, birth date, gender, masking."""

from __future__ import annotations

import datetime as _dt

import pytest

from govpki.errors import InvalidError
from ra.idnumber import Gender, check_char, mask, parse_id_number
from tests.ra.idnumbers import id_number, wrong_check

TODAY = _dt.date(2026, 11, 22)


def test_examples_of_the_standard():
    # the worked examples printed in GB 11643-1999 (not real people)
    assert check_char("11010519491231002") == "X"
    assert check_char("44052418800101001") == "4"
    parsed = parse_id_number("11010519491231002x", TODAY)
    assert parsed.value == "11010519491231002X"
    assert parsed.birth_date == _dt.date(1949, 12, 31)
    assert parsed.gender is Gender.FEMALE  # 17th digit 2: even
    assert parse_id_number(" 440524188001010014 ", TODAY).gender is Gender.MALE


def test_gender_from_the_seventeenth_digit():
    assert parse_id_number(id_number(sequence="131"), TODAY).gender is Gender.MALE
    assert parse_id_number(id_number(sequence="130"), TODAY).gender is Gender.FEMALE


def test_abolished_area_codes_stay_valid():
    # 652100 (the former Turpan prefecture code) and a made-up code: the area is not looked up
    assert parse_id_number(id_number(area="652101"), TODAY).value.startswith("652101")
    assert parse_id_number(id_number(area="999999"), TODAY).value.startswith("999999")


def test_masked():
    number = id_number(area="650102", birth="19800101", sequence="123")
    assert mask(number) == "6501**********" + number[-4:]
    assert parse_id_number(number, TODAY).masked == mask(number)
    assert len(mask(number)) == 18


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("", "ra.id_number_empty", "empty"),
        ("65010219800101123", "ra.id_number_length", "17 characters"),
        ("6501021980010112345", "ra.id_number_length", "19 characters"),
        ("65010219800101A234", "ra.id_number_characters", "17 digits"),
        ("6501021980010112X4", "ra.id_number_characters", "17 digits"),
        (wrong_check(id_number()), "ra.id_number_checksum", "check character"),
        (id_number(birth="19810229"), "ra.id_number_birth_date", "impossible birth date 1981-02-29"),
        (id_number(birth="19801301"), "ra.id_number_birth_date", "impossible"),
        (id_number(birth="19800100"), "ra.id_number_birth_date", "impossible"),
        (id_number(birth="20261123"), "ra.id_number_birth_date", "future"),
        (id_number(birth="17991231"), "ra.id_number_birth_date", "before 1800"),
    ],
)
def test_bad_numbers(text: str, code: str, words: str):
    with pytest.raises(InvalidError) as caught:
        parse_id_number(text, TODAY)
    assert caught.value.code == code
    assert caught.value.field == "id_number"
    assert words in caught.value.reason


def test_leap_day_and_today_are_fine():
    assert parse_id_number(id_number(birth="20000229"), TODAY).birth_date == _dt.date(2000, 2, 29)
    assert parse_id_number(id_number(birth="20261122"), TODAY).birth_date == TODAY
