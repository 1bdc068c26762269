"""Technician's command line: ``python -m devices ...`` (also ``backroom-devices``).

Every command prints one JSON object on stdout. Exit status 0 on success; otherwise
non-zero with ``{"error": "<condition>", "message": "..."}`` where the condition is a
:class:`~devices.errors.Condition` (``motion``, ``no_answer``, ``paper_end``, ...), or
``usage`` / ``bad_input`` for a bad command line or input.

    python -m devices list
    python -m devices probe --port URL
    python -m devices scale read --protocol toledo-8217 --port URL
    python -m devices scale probe --port URL
    python -m devices fiscal status|transaction|last-document --protocol datecs-x --port URL
    python -m devices fiscal receipt --protocol datecs-x --port URL < receipt.json
    python -m devices fiscal report --protocol datecs-x --port URL --type x|z
    python -m devices fiscal cash --port URL --amount 10.00 [--out]
    python -m devices fiscal finish-open --port URL   # cancel, or pay the rest in cash and close
    python -m devices printer print|status --port URL [--text TEXT]   (print reads stdin)
    python -m devices drawer open --port URL --pin 2|5
    python -m devices display show --port URL --line1 TEXT [--line2 TEXT]
    python -m devices scanner read --port URL [--timeout S]
    python -m devices simulate scale|fiscal|printer|display|scanner --listen 127.0.0.1:PORT|--pty
"""

from __future__ import annotations

import argparse
import errno
import json
import re
import signal
import sys
import threading
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from devices.display import CustomerDisplay
from devices.errors import DeviceError
from devices.escpos import EscPosPrinter, PrinterStatus
from devices.fiscal_datecs import DatecsFiscalPrinter, FiscalReceipt, Payment, SaleLine
from devices.scale_toledo import ToledoScale
from devices.scanner import SerialScanner, parse_barcode

__all__ = ["main", "receipt_from_json", "run"]

# The agent's spelling (its TOML takes what probe prints); the old one still accepted.
SCALE_PROTOCOLS = ("toledo-8217", "toledo8217")
FISCAL_PROTOCOLS = ("datecs-x",)


class _Usage(Exception):
    pass


_SERIAL = re.compile(r"[A-Z]{2}[0-9]{6}")
_FISCAL_MEMORY = re.compile(r"[0-9]{8}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


def _decimal(value: Any, field: str) -> Decimal:
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{field}: not a number: {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"{field}: not a number: {value!r}")
    return result


def receipt_from_json(doc: Any) -> FiscalReceipt:
    """Build a :class:`FiscalReceipt` from the CLI's JSON receipt."""
    if not isinstance(doc, dict):
        raise ValueError("receipt must be a JSON object")
    lines = []
    for i, line in enumerate(doc.get("lines") or []):
        if not isinstance(line, dict):
            raise ValueError(f"lines[{i}] must be an object")
        discount = line.get("discount_percent")
        discount_amount = line.get("discount_amount")
        lines.append(
            SaleLine(
                name=str(line["name"]),
                vat_group=str(line["vat_group"]),
                price=_decimal(line["price"], f"lines[{i}].price"),
                quantity=_decimal(line.get("quantity", "1.000"), f"lines[{i}].quantity"),
                discount_percent=None
                if discount in (None, "")
                else _decimal(discount, f"lines[{i}].discount_percent"),
                discount_amount=None
                if discount_amount in (None, "")
                else _decimal(discount_amount, f"lines[{i}].discount_amount"),
                department=int(line.get("department", 0)),
            )
        )
    payments = [
        Payment(str(p["type"]), _decimal(p["amount"], f"payments[{i}].amount"))
        for i, p in enumerate(doc.get("payments") or [])
    ]
    hint = doc.get("previous_receipt_number")
    receipt = FiscalReceipt(
        lines=tuple(lines),
        payments=tuple(payments),
        operator=int(doc.get("operator", 1)),
        password=str(doc.get("password", "1")),
        till=int(doc.get("till", 1)),
        previous_receipt_number=None if hint is None else int(hint),
    )
    receipt.validate()
    return receipt


def _printer_status_json(status: PrinterStatus) -> dict[str, Any]:
    return {
        "online": status.online,
        "drawer_open": status.drawer_open,
        "cover_open": status.cover_open,
        "paper_near_end": status.paper_near_end,
        "paper_end": status.paper_end,
        "error": status.error or status.autocutter_error or status.unrecoverable_error,
        "raw": status.raw.hex(" "),
    }


# -- commands ------------------------------------------------------------------------------
def _scale(args: argparse.Namespace) -> dict[str, Any]:
    with ToledoScale(args.port, timeout=args.timeout) as scale:
        if args.action == "probe":
            if not scale.probe():
                raise DeviceError("no_answer", "no echo from a Toledo 8217 scale")
            return {"ok": True, "protocol": "toledo-8217"}
        if args.action == "zero":
            scale.zero()
            return {"ok": True}
        if args.action == "tare":
            scale.tare()
            return {"ok": True}
        if args.action == "clear-tare":
            scale.clear_tare()
            return {"ok": True}
        reading = scale.read_weight()
        return {
            "weight_kg": str(reading.weight_kg),
            "weight": str(reading.weight),
            "unit": reading.unit,
            "grams": reading.grams,
            "stable": reading.stable,
            "net": reading.net,
        }


def _fiscal(args: argparse.Namespace) -> dict[str, Any]:
    receipt = None
    if args.action == "receipt":
        try:
            receipt = receipt_from_json(json.load(sys.stdin))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bad receipt: {exc}") from exc
    with DatecsFiscalPrinter(
        args.port, answer_timeout=args.timeout, baudrate=args.baudrate
    ) as printer:
        if args.action == "status":
            status = printer.status()
            return {"status": status.names, "raw": status.raw.hex(" ")}
        if args.action == "transaction":
            ts = printer.transaction_status()
            return {
                "is_open": ts.is_open,
                "number": ts.number,
                "items": ts.items,
                "amount": str(ts.amount),
                "paid": str(ts.paid),
            }
        if args.action == "finish-open":
            finished = printer.finish_open_receipt()
            if finished is None:
                return {"finished": None}
            return {
                "finished": {
                    "number": finished.number,
                    "action": finished.action,
                    "amount": str(finished.amount),
                    "paid_before": str(finished.paid_before),
                    "cash_added": str(finished.cash_added),
                }
            }
        if args.action == "info":
            # Which unit is on the port: after a swap, the serial tells the new printer.
            info = printer.diagnostic()
            return {
                "name": info.name,
                "firmware": info.firmware,
                "serial_number": info.serial_number,
                "fiscal_memory_number": info.fiscal_memory_number,
            }
        if args.action == "last-document":
            return {"number": printer.last_document_number()}
        if args.action == "report":
            report = printer.report(args.type)
            return {
                "type": args.type,
                "report_number": report.report_number,
                "totals": [str(t) for t in report.totals],
            }
        if args.action == "cash":
            printer.cash_in_out(_decimal(args.amount, "amount"), out=args.out)
            return {"ok": True, "direction": "out" if args.out else "in", "amount": args.amount}
        assert receipt is not None
        try:
            result = printer.print_receipt(receipt)
        except DeviceError as exc:
            hint = getattr(exc, "previous_receipt_number", None)
            if hint is not None:
                exc.details["previous_receipt_number"] = hint
            raise
        return {
            "slip_number": result.slip_number,
            "total": str(result.total),
            "change": str(result.change),
            "reconciled": result.reconciled,
            "previous_receipt_number": result.previous_receipt_number,
        }


def _printer(args: argparse.Namespace) -> dict[str, Any]:
    with EscPosPrinter(args.port, timeout=args.timeout) as printer:
        if args.action == "status":
            status = printer.status()
            out = _printer_status_json(status)
            out["problem"] = None if status.problem is None else str(status.problem)
            return out
        text = args.text if args.text is not None else sys.stdin.read()
        status = printer.print_text(text, cut=not args.no_cut)
        return {"ok": True, "status": _printer_status_json(status)}


def _drawer(args: argparse.Namespace) -> dict[str, Any]:
    with EscPosPrinter(args.port, timeout=args.timeout) as printer:
        printer.kick_drawer(args.pin)
    return {"ok": True, "pin": args.pin}


def _display(args: argparse.Namespace) -> dict[str, Any]:
    with CustomerDisplay(args.port, timeout=args.timeout) as display:
        display.show(args.line1, args.line2)
    return {"ok": True, "line1": args.line1[:20], "line2": args.line2[:20]}


def _scanner(args: argparse.Namespace) -> dict[str, Any]:
    with SerialScanner(args.port) as scanner:
        code = scanner.read_code(args.timeout)
    if code is None:
        raise DeviceError("no_answer", "no code scanned")
    barcode = parse_barcode(code)
    return {
        "code": code,
        "symbology": barcode.symbology,
        "weight_embedded": barcode.weight_embedded,
    }


def _list(args: argparse.Namespace) -> dict[str, Any]:
    from serial.tools import list_ports

    ports = [
        {
            "device": p.device,
            "description": p.description,
            "hwid": p.hwid,
            "vid": p.vid,
            "pid": p.pid,
            "serial_number": p.serial_number,
        }
        for p in list_ports.comports()
    ]
    return {"ports": ports}


def _probe(args: argparse.Namespace) -> dict[str, Any]:
    """Positive probes only: an identity/status frame or an echo, never a mere silence."""
    found: list[str] = []
    tried: dict[str, str] = {}
    unavailable: DeviceError | None = None
    for protocol in args.protocols.split(","):
        try:
            if protocol == "datecs-x":
                with DatecsFiscalPrinter(args.port, answer_timeout=args.timeout, resends=0) as fp:
                    fp.status()  # a valid framed answer with our SEQ is a positive identity
            elif protocol == "escpos":
                with EscPosPrinter(args.port, timeout=args.timeout) as printer:
                    printer.status()  # four well-shaped real-time status bytes
            elif protocol in SCALE_PROTOCOLS:
                with ToledoScale(args.port, timeout=args.timeout) as scale:
                    if not scale.probe():
                        raise DeviceError("no_answer", "no echo")
            else:
                raise ValueError(f"unknown protocol {protocol!r}")
        except DeviceError as exc:
            tried[protocol] = exc.condition
            if exc.condition == "port_unavailable":
                unavailable = unavailable or exc
            continue
        found.append(protocol)
        break
    if not found and unavailable is not None and set(tried.values()) == {"port_unavailable"}:
        # Nothing was asked: the port itself could not be opened (missing, or locked by
        # the running agent); "no answer" would send the technician to the device.
        raise DeviceError(
            "port_unavailable", unavailable.message, tried=tried, **unavailable.details
        )
    if not found:
        raise DeviceError("no_answer", "no known protocol answered", tried=tried)
    return {"port": args.port, "protocol": found[0], "tried": tried}


def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    from devices.sim import start_simulator

    identity = {"serial": args.serial, "fiscal_memory": args.fiscal_memory}
    if args.kind != "fiscal" and any(identity.values()):
        raise _Usage("--serial and --fiscal-memory are a fiscal printer's")
    # A second unit to rehearse a printer swap: another identity than the default one.
    if args.serial is not None and not _SERIAL.fullmatch(args.serial):
        raise _Usage(f"--serial {args.serial!r}: two capital letters and six digits (DT123456)")
    if args.fiscal_memory is not None and not _FISCAL_MEMORY.fullmatch(args.fiscal_memory):
        raise _Usage(f"--fiscal-memory {args.fiscal_memory!r}: eight digits (02345678)")
    if args.pty:
        handle = start_simulator(args.kind, pty=True, link_path=args.link)
    else:
        host, _, port = args.listen.rpartition(":")
        try:
            handle = start_simulator(args.kind, (host or "127.0.0.1", int(port)))
        except OSError as exc:
            raise DeviceError(
                "port_unavailable",
                f"cannot listen on {args.listen}: {exc.strerror or exc}"
                + (" (another program listens there)" if exc.errno == errno.EADDRINUSE else ""),
                listen=args.listen,
            ) from exc
    sim = handle.sim
    for fault in args.fault or []:
        sim.set_fault(fault)
    if args.weight is not None and args.kind == "scale":
        sim.set_weight(args.weight)
    if args.serial is not None:
        sim.serial_number = args.serial
    if args.fiscal_memory is not None:
        sim.fiscal_memory_number = args.fiscal_memory
    _emit({"kind": args.kind, "url": handle.url, "faults": args.fault or []})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
    return {}


# -- parser ---------------------------------------------------------------------------------
def _parser() -> _Parser:
    parser = _Parser(prog="python -m devices", description="Backroom device tools")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def port_args(p: argparse.ArgumentParser, timeout: float = 1.0) -> None:
        p.add_argument("--port", required=True, help="pyserial URL or device path")
        p.add_argument("--timeout", type=float, default=timeout, help="seconds")

    scale = sub.add_parser("scale")
    scale.add_argument("action", choices=["read", "probe", "zero", "tare", "clear-tare"])
    scale.add_argument("--protocol", choices=SCALE_PROTOCOLS, default="toledo-8217")
    port_args(scale)
    scale.set_defaults(func=_scale)

    fiscal = sub.add_parser("fiscal")
    fiscal.add_argument(
        "action",
        choices=[
            "status",
            "info",
            "transaction",
            "last-document",
            "receipt",
            "report",
            "cash",
            "finish-open",
        ],
    )
    fiscal.add_argument("--protocol", choices=FISCAL_PROTOCOLS, default="datecs-x")
    fiscal.add_argument("--type", choices=["x", "z"], default="x")
    fiscal.add_argument("--amount", default="0")
    fiscal.add_argument("--out", action="store_true", help="cash out instead of in")
    fiscal.add_argument("--baudrate", type=int, default=115200)
    port_args(fiscal, 0.5)
    fiscal.set_defaults(func=_fiscal)

    printer = sub.add_parser("printer")
    printer.add_argument("action", choices=["print", "status"])
    printer.add_argument("--text", help="text to print (default: stdin)")
    printer.add_argument("--no-cut", action="store_true")
    port_args(printer)
    printer.set_defaults(func=_printer)

    drawer = sub.add_parser("drawer")
    drawer.add_argument("action", choices=["open"])
    drawer.add_argument("--pin", type=int, choices=[2, 5], default=2)
    port_args(drawer)
    drawer.set_defaults(func=_drawer)

    display = sub.add_parser("display")
    display.add_argument("action", choices=["show"])
    display.add_argument("--line1", default="")
    display.add_argument("--line2", default="")
    port_args(display)
    display.set_defaults(func=_display)

    scanner = sub.add_parser("scanner")
    scanner.add_argument("action", choices=["read"])
    port_args(scanner, 10.0)
    scanner.set_defaults(func=_scanner)

    lister = sub.add_parser("list")
    lister.set_defaults(func=_list)

    probe = sub.add_parser("probe")
    probe.add_argument("--protocols", default="datecs-x,escpos,toledo-8217")
    port_args(probe, 0.5)
    probe.set_defaults(func=_probe)

    simulate = sub.add_parser("simulate")
    simulate.add_argument("kind", choices=["scale", "fiscal", "printer", "display", "scanner"])
    where = simulate.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", help="127.0.0.1:PORT")
    where.add_argument("--pty", action="store_true")
    simulate.add_argument("--link", help="with --pty: symlink to the slave")
    simulate.add_argument("--fault", action="append", help="fault to switch on (repeatable)")
    simulate.add_argument("--weight", help="scale: weight in kg")
    simulate.add_argument(
        "--serial", help="fiscal: the unit's serial number (two letters, six digits)"
    )
    simulate.add_argument(
        "--fiscal-memory", help="fiscal: the unit's fiscal memory number (eight digits)"
    )
    simulate.set_defaults(func=_simulate)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        result = args.func(args)
    except _Usage as exc:
        _emit({"error": "usage", "message": str(exc)})
        return 2
    except DeviceError as exc:
        _emit({"error": exc.condition, "message": exc.message, **_jsonable(exc.details)})
        return 1
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        _emit({"error": "bad_input", "message": str(exc)})
        return 2
    if result:
        _emit(result)
    return 0


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if k not in ("error", "message")}


def main() -> None:
    sys.exit(run())
