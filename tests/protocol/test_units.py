from __future__ import annotations

import pytest

from protocol.units import (
    format_milli,
    format_minor,
    line_amount,
    parse_milli,
    parse_minor,
    percent_of,
)


def test_parse_and_format_are_exact() -> None:
    assert parse_minor("1.99") == 199
    assert parse_minor("0.1") == 10
    assert parse_milli("0.754") == 754
    assert format_minor(199) == "1.99"
    assert format_milli(1234) == "1.234"
    assert format_milli(-5) == "-0.005"


@pytest.mark.parametrize("text", ["1.999", "abc", "NaN", "Infinity", ""])
def test_parse_minor_refuses_what_it_would_have_to_round(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        parse_minor(text)


def test_line_amount_rounds_half_up() -> None:
    assert line_amount(299, 754) == 225  # 225.446
    assert line_amount(250, 1500) == 375
    assert line_amount(1, 500) == 1  # 0.5 rounds up
    assert line_amount(1, 499) == 0
    assert percent_of(999, 1000) == 100  # 99.9
    assert percent_of(5, 1000) == 1  # 0.5
