"""The one comparison that decides whether a cash in/out sent to the fiscal printer
was printed (used by cash moves and the opening float after a crash or lost answer)."""

from __future__ import annotations

import pytest

from branch_agent.fiscal import printer_took
from devices import Condition, DeviceError


def test_nothing_moved_means_not_printed() -> None:
    assert printer_took("cash move m1", (41, 10_000), (41, 10_000), 2_500) is False


def test_one_document_and_the_amount_means_printed() -> None:
    assert printer_took("cash move m1", (41, 10_000), (42, 12_500), 2_500) is True
    assert printer_took("cash move m2", (41, 10_000), (42, 7_500), -2_500) is True


@pytest.mark.parametrize(
    "now",
    [
        (42, 10_000),  # a document printed, the drawer unchanged: a receipt, not this
        (43, 12_500),  # two documents: something else printed too
        (42, 12_600),  # another amount
        (40, 10_000),  # the printer went back: another printer or a reset
    ],
)
def test_anything_else_is_for_a_person(now: tuple[int, int]) -> None:
    with pytest.raises(DeviceError) as raised:
        printer_took("opening float", (41, 10_000), now, 2_500)
    assert raised.value.condition == Condition.UNKNOWN_STATE
    assert "opening float" in str(raised.value)
    assert "expected 41 or 42 and 10000 or 12500" in str(raised.value)
