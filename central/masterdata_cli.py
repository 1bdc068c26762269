"""``python -m central import products|prices FILE [--dry-run] [--allow-large-changes]``
and ``export products|prices [FILE] [--history]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import msgspec

from central.settings import CentralSettings

__all__ = ["add_masterdata_commands", "run_masterdata_command"]


def add_masterdata_commands(sub: Any) -> None:
    imp = sub.add_parser("import", help="import products or prices from CSV (validate all first)")
    imp.add_argument("what", choices=("products", "prices"))
    imp.add_argument("file", help="CSV file (UTF-8, header row); - for stdin")
    imp.add_argument("--dry-run", action="store_true", help="validate and report, change nothing")
    imp.add_argument(
        "--allow-large-changes",
        action="store_true",
        help="prices: accept prices more than 10x above or below the price in force",
    )
    exp = sub.add_parser("export", help="export products or prices as CSV")
    exp.add_argument("what", choices=("products", "prices"))
    exp.add_argument("file", nargs="?", default="-", help="output file; - for stdout")
    exp.add_argument(
        "--history",
        action="store_true",
        help="prices: every entry with its moment (default: the prices in force now)",
    )


def _progress(stage: str, done: int, total: int) -> None:
    text = f"\r{stage}: {done:,}" + (f"/{total:,} ({done * 100 // total} %)" if total else "")
    sys.stderr.write(text)
    sys.stderr.flush()


async def _run(settings: CentralSettings, args: argparse.Namespace) -> int:
    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError
    from central.services.catalog_import import (
        export_prices_csv,
        export_products_csv,
        import_prices,
        import_products,
    )

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            if args.command == "export":
                text = await (
                    export_products_csv(session)
                    if args.what == "products"
                    else export_prices_csv(session, history=args.history)
                )
                if args.file == "-":
                    sys.stdout.write(text)
                else:
                    with open(args.file, "w", encoding="utf-8", newline="") as out:  # noqa: ASYNC230
                        out.write(text)
                return 0
            started = time.perf_counter()
            handle = (
                sys.stdin if args.file == "-" else open(args.file, encoding="utf-8-sig", newline="")  # noqa: SIM115, ASYNC230
            )
            try:
                if args.what == "products":
                    report = await import_products(
                        session, handle, dry_run=args.dry_run, progress=_progress
                    )
                else:
                    report = await import_prices(
                        session,
                        handle,
                        dry_run=args.dry_run,
                        progress=_progress,
                        allow_large_changes=args.allow_large_changes,
                    )
            except DomainError as exc:
                print(json.dumps({"error": exc.detail, "field": exc.field}))
                return 1
            finally:
                if handle is not sys.stdin:
                    handle.close()
            sys.stderr.write("\n")
            out = msgspec.to_builtins(report)
            out["seconds"] = round(time.perf_counter() - started, 2)
            print(json.dumps(out))
            return 1 if report.error_count else 0
    finally:
        await engine.dispose()


def run_masterdata_command(settings: CentralSettings, args: argparse.Namespace) -> int:
    return asyncio.run(_run(settings, args))
