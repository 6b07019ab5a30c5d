"""Made-up resident ID numbers with a correct check character (no real person's)."""

from __future__ import annotations

from ra.idnumber import check_char


def id_number(area: str = "650102", birth: str = "19800101", sequence: str = "123") -> str:
    """An 18-character number: area, birth date (YYYYMMDD), sequence (odd: male) and its check char."""
    first17 = area + birth + sequence
    return first17 + check_char(first17)


def wrong_check(number: str) -> str:
    """The same number with another check character."""
    other = "0" if number[17] != "0" else "1"
    return number[:17] + other
