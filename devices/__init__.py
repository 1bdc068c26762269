"""Backroom device layer: drivers for scales, fiscal printers, receipt printers, customer
displays and barcode scanners, plus faithful simulators (:mod:`devices.sim`).

Knows nothing about sales. Wire formats follow DEVICES.md byte for byte; see
``docs/devices.md`` for the API the branch agent uses.
"""

from __future__ import annotations

from devices.display import CustomerDisplay
from devices.errors import Condition, DeviceError, FiscalError, PrinterError, ScaleError
from devices.escpos import EscPosPrinter, PrinterStatus
from devices.fiscal_datecs import (
    DatecsFiscalPrinter,
    FiscalReceipt,
    FiscalResult,
    FiscalStatus,
    Payment,
    ReportResult,
    SaleLine,
    StatusBit,
    TransactionStatus,
)
from devices.ports import Port, SerialSettings
from devices.scale_toledo import ScaleStatus, ToledoScale, WeightReading
from devices.scanner import (
    Barcode,
    EvdevScanner,
    KeyCodeParser,
    SerialScanner,
    WeightEmbedded,
    WeightLayout,
    decode_weight_embedded,
    parse_barcode,
    validate_ean,
)

__all__ = [
    "Barcode",
    "Condition",
    "CustomerDisplay",
    "DatecsFiscalPrinter",
    "DeviceError",
    "EscPosPrinter",
    "EvdevScanner",
    "FiscalError",
    "FiscalReceipt",
    "FiscalResult",
    "FiscalStatus",
    "KeyCodeParser",
    "Payment",
    "Port",
    "PrinterError",
    "PrinterStatus",
    "ReportResult",
    "SaleLine",
    "ScaleError",
    "ScaleStatus",
    "SerialScanner",
    "SerialSettings",
    "StatusBit",
    "ToledoScale",
    "TransactionStatus",
    "WeightEmbedded",
    "WeightLayout",
    "WeightReading",
    "decode_weight_embedded",
    "parse_barcode",
    "validate_ean",
]
