"""Limits of wire values: the size of the central column that stores each one.

Central stores every text of a branch event in a column of fixed size and every
integer in a 32-bit (INTEGER) or 64-bit (BIGINT) column. PostgreSQL refuses a longer
text or a larger number, SQLite keeps it: the limits are declared here, on the wire
Structs' fields, so a message that breaks one is refused when it is decoded (a dead
letter at central, a 422 at the agent's API) on either database.

Structs only gain fields with defaults; a limit is tightened only where central
could never store the longer value anyway.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "CASH_MOVE_MAX",
    "FISCAL_AMOUNT_MAX",
    "INT32_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_EVENT_BYTES",
    "MAX_SCALE_PLU",
    "NO_NUL",
    "STOCK_DOCUMENT_PART_LINES",
    "CashMoveAmount",
    "Code32",
    "Code64",
    "CountedCash",
    "CurrencyCode",
    "Int64",
    "NonNegativeInt32",
    "NonNegativeInt64",
    "OpeningFloat",
    "PositiveInt32",
    "PositiveInt64",
    "TenderAmount",
    "Text",
    "Text64",
    "Text200",
]

INT32_MAX = 2**31 - 1

# The largest PLU a label scale's weight-embedded barcode can carry: the layout
# 2 X PPPPP WWWWW C (DEVICES.md; devices.scanner's default WeightLayout) has five PLU
# digits. A larger PLU is on no label, so no scanned item could find its product.
MAX_SCALE_PLU = 99_999

# The largest encoded event a branch writes to its outbox: NATS's default max_payload
# (1 MiB, which every server of the chain keeps or raises) less room for the headers.
# A bigger one could never be published and would hold its branch's queue.
MAX_EVENT_BYTES = 1024 * 1024 - 4096
# Lines per event of a stock document sent in parts: at most ~160 bytes a line with
# every field at its limit, 5,000 lines stay well under MAX_EVENT_BYTES.
STOCK_DOCUMENT_PART_LINES = 5000
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# No text may hold NUL (U+0000): PostgreSQL text cannot store it, so central would
# refuse the event after the branch had recorded its fact (a till written in C that
# pads a name with NULs). Refused where the text is first read instead.
NO_NUL = r"^[^\x00]*$"

# Identifiers and codes: till ids, SKUs, barcodes, sale and document ids.
Code32 = Annotated[str, msgspec.Meta(max_length=32, pattern=NO_NUL)]
Code64 = Annotated[str, msgspec.Meta(max_length=64, pattern=NO_NUL)]
# An id a client gives its record (sale, return, cash move): something that is not a
# blank. Blanks only ("  ") looked like no id to the person reading it, yet a second
# record under it was a retry of the first.
NOT_BLANK = r"^[^\x00]*[^\x00\s][^\x00]*$"
RecordId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=NOT_BLANK,
        extra={"hint": "an id of up to 64 characters, not empty or blanks only"},
    ),
]
# The same where empty means "let the agent name it" (a shift's id).
RecordIdOrEmpty = Annotated[
    str,
    msgspec.Meta(
        max_length=64,
        pattern=f"^$|{NOT_BLANK}",
        extra={"hint": "an id of up to 64 characters, or empty; not blanks only"},
    ),
]
# Text for people: cashier and author names, product names, suppliers.
Text64 = Annotated[str, msgspec.Meta(max_length=64, pattern=NO_NUL)]
Text200 = Annotated[str, msgspec.Meta(max_length=200, pattern=NO_NUL)]
# Text of any length (reasons, stored as unbounded text).
Text = Annotated[str, msgspec.Meta(pattern=NO_NUL)]
# ISO 4217, e.g. EUR.
CurrencyCode = Annotated[str, msgspec.Meta(max_length=3, pattern=NO_NUL)]

# INTEGER columns: counts, line numbers, report numbers.
NonNegativeInt32 = Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)]
PositiveInt32 = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
# BIGINT columns: money (minor units), quantities (thousandths), numbers, versions.
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
NonNegativeInt64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
PositiveInt64 = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]

# The largest amount a Datecs "X" fiscal printer takes in a field (vendor manual: Price,
# Price x Quantity, a payment's Amount, the subtotal are 0.00..9999999.99): 9,999,999.99
# in minor units. A sale beyond it would be committed and then refused by the printer
# on every retry, holding the till's queue; the till API refuses it before recording.
FISCAL_AMOUNT_MAX = 999_999_999
# One payment a till posts (a cash tender included; the change is what is over).
TenderAmount = Annotated[int, msgspec.Meta(ge=1, le=FISCAL_AMOUNT_MAX)]

# One cash move typed at a till, or a shift's opening float (deposited on the fiscal
# printer as a cash in): what the printer takes in one field. A shift's moves are summed
# in 64-bit integers, so at this bound it takes billions of moves to overflow. Only the
# till API takes it: the wire field (CashMoved.amount) keeps its BIGINT limit, so events
# already recorded still go up. (It was 10**9, a cent more than the printer takes, and
# the float had no bound: a float the printer refuses would wait before every receipt.)
CASH_MOVE_MAX = FISCAL_AMOUNT_MAX
CashMoveAmount = Annotated[int, msgspec.Meta(ge=1, le=CASH_MOVE_MAX)]
OpeningFloat = Annotated[int, msgspec.Meta(ge=0, le=CASH_MOVE_MAX)]
# The cash a cashier counted in the drawer at a shift's close: as large as one float.
CountedCash = OpeningFloat
