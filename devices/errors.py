"""Exceptions raised by the device drivers.

Every failure a driver reports is a :class:`DeviceError` whose ``condition`` is a short,
stable string (``no_answer``, ``bad_frame``, ``motion``, ``paper_end``, ...). The CLI
prints it as the ``"error"`` field, and the branch agent can branch on it without
parsing messages. Subclasses only exist so callers can catch one device family.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "Condition",
    "DeviceError",
    "FiscalError",
    "PrinterError",
    "ScaleError",
]


class Condition(StrEnum):
    """Names of the conditions a driver can report."""

    # transport
    NO_ANSWER = "no_answer"
    BAD_FRAME = "bad_frame"
    PORT_UNAVAILABLE = "port_unavailable"
    LINK_LOST = "link_lost"
    # scale
    MOTION = "motion"
    OVER_CAPACITY = "over_capacity"
    UNDER_ZERO = "under_zero"
    ZERO_ERROR = "zero_error"
    NO_WEIGHT = "no_weight"
    # printers (fiscal and receipt)
    PAPER_END = "paper_end"
    COVER_OPEN = "cover_open"
    OFFLINE = "offline"
    PRINTER_ERROR = "printer_error"
    MECHANISM_FAILURE = "mechanism_failure"
    # fiscal printer
    RECEIPT_OPEN = "receipt_open"
    NOT_PERMITTED = "not_permitted"
    SYNTAX_ERROR = "syntax_error"
    INVALID_COMMAND = "invalid_command"
    FISCAL_MEMORY = "fiscal_memory"
    JOURNAL_FULL = "journal_full"
    COMMAND_FAILED = "command_failed"
    UNKNOWN_STATE = "unknown_state"


class DeviceError(Exception):
    """A device failed; ``condition`` names why (see :class:`Condition`)."""

    def __init__(self, condition: Condition | str, message: str = "", **details: Any) -> None:
        self.condition = str(condition)
        self.message = message or self.condition.replace("_", " ")
        self.details: dict[str, Any] = details
        super().__init__(f"{self.condition}: {self.message}")


class ScaleError(DeviceError):
    """A weighing scale refused or could not give a weight."""


class FiscalError(DeviceError):
    """A fiscal printer refused a command or its state could not be established.

    ``previous_receipt_number`` is the printer's last receipt number seen before the
    receipt being printed was first attempted (``None`` when not printing a receipt).
    Keep it with the sale and pass it back in ``FiscalReceipt.previous_receipt_number``
    when retrying, so the retry can tell whether the receipt was already fiscalized.
    """

    def __init__(
        self,
        condition: Condition | str,
        message: str = "",
        *,
        previous_receipt_number: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(condition, message, **details)
        self.previous_receipt_number = previous_receipt_number


class PrinterError(DeviceError):
    """An ESC/POS receipt printer reported a problem."""
