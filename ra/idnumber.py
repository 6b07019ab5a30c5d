"""Resident identity card numbers (公民身份号码, GB 11643-1999).

18 characters: a 6-digit area code, the birth date ``YYYYMMDD``, a 3-digit sequence
(odd for men, even for women) and a check character computed with ISO 7064 MOD 11-2
(``0``-``9`` or ``X`` for 10). Area codes are not checked against today's GB/T 2260
list: abolished codes stay valid on old cards.
"""

from __future__ import annotations

import datetime as _dt
import enum
import re
from dataclasses import dataclass

from govpki.errors import InvalidError

_SHAPE = re.compile(r"\d{17}[\dX]")
_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2
_CHECK_CHARS = "10X98765432"  # index: (sum of weighted digits) mod 11
EARLIEST_BIRTH = _dt.date(1800, 1, 1)  # only a sanity bound: the standard's own example is born in 1880


class Gender(enum.StrEnum):
    MALE = "male"
    FEMALE = "female"


@dataclass(frozen=True)
class IdNumber:
    """A checked number, normalised (upper-case ``X``)."""

    value: str
    birth_date: _dt.date
    gender: Gender

    @property
    def masked(self) -> str:
        return mask(self.value)


def check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits."""
    if not re.fullmatch(r"\d{17}", first17):
        raise ValueError("17 digits expected")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def mask(value: str) -> str:
    """The form shown to people who may not see the number: ``6501**********1234``."""
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def parse_id_number(text: str, today: _dt.date, field: str = "id_number") -> IdNumber:
    """Check ``text`` as a GB 11643 number; an :class:`InvalidError` naming ``field`` says why not."""
    value = (text or "").strip().upper()
    if not value:
        raise InvalidError(
            "is empty; enter the 18-character resident ID number", field=field, code="ra.id_number_empty"
        )
    if len(value) != 18:
        raise InvalidError(
            f"has {len(value)} characters; a resident ID number has 18",
            field=field,
            code="ra.id_number_length",
            params={"count": len(value)},
        )
    if not _SHAPE.fullmatch(value):
        raise InvalidError("must be 17 digits followed by a digit or X", field=field, code="ra.id_number_characters")
    try:
        birth = _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        raise InvalidError(
            f"has the impossible birth date {value[6:10]}-{value[10:12]}-{value[12:14]} (characters 7-14)",
            field=field,
            code="ra.id_number_birth_date",
            params={"problem": "impossible", "date": f"{value[6:10]}-{value[10:12]}-{value[12:14]}"},
        ) from None
    if birth > today:
        raise InvalidError(
            f"has a birth date in the future ({birth.isoformat()})",
            field=field,
            code="ra.id_number_birth_date",
            params={"problem": "future", "date": birth.isoformat()},
        )
    if birth < EARLIEST_BIRTH:
        raise InvalidError(
            f"has a birth date before {EARLIEST_BIRTH.year} ({birth.isoformat()})",
            field=field,
            code="ra.id_number_birth_date",
            params={"problem": "too_early", "date": birth.isoformat(), "year": EARLIEST_BIRTH.year},
        )
    expected = check_char(value[:17])
    if value[17] != expected:
        raise InvalidError(
            "has a wrong check character (the 18th): the number was mistyped", field=field, code="ra.id_number_checksum"
        )
    gender = Gender.MALE if int(value[16]) % 2 == 1 else Gender.FEMALE
    return IdNumber(value=value, birth_date=birth, gender=gender)
