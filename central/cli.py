"""``python -m central``: run the API or ingest workers, migrate, administer branches."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from central.settings import CentralSettings, load_settings

__all__ = ["main"]


def _print(obj: Any) -> None:
    print(json.dumps(obj, default=str))


async def _db_upgrade(settings: CentralSettings, revision: str) -> None:
    from central.db import upgrade

    await upgrade(settings.database_url, revision)
    _print({"database": settings.database_url.split("@")[-1], "upgraded_to": revision})


def _serve(settings: CentralSettings) -> None:
    import uvicorn

    from central.app import create_app
    from central.db import upgrade

    asyncio.run(upgrade(settings.database_url))
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="info",
        timeout_keep_alive=15,
    )


async def _ingest(settings: CentralSettings, workers: int) -> None:
    from central.runtime import CentralRuntime

    runtime = CentralRuntime(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runtime.request_stop)
    await runtime.start(ingest_workers=workers)
    try:
        await runtime.wait_stopped()
    finally:
        await runtime.stop()


async def _branches_add(settings: CentralSettings, args: argparse.Namespace) -> int:
    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError
    from central.services.branches import add_branch

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            branch = await add_branch(
                session,
                code=args.code,
                name=args.name or args.code,
                timezone=args.timezone,
                format_code=args.format,
                price_zone=args.zone,
            )
        _print({"branch": branch.code, "name": branch.name, "timezone": branch.timezone})
        return 0
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m central", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (section [central])")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="migrate to the newest schema")
    up.add_argument("revision", nargs="?", default="heads")

    sub.add_parser("serve", help="run the web API (and an ingest worker if configured)")
    ingest = sub.add_parser("ingest", help="run ingest workers (no web API)")
    ingest.add_argument("--workers", type=int, default=1)

    demo = sub.add_parser("demo", help="run the whole chain on embedded defaults (make run)")
    demo.add_argument("--data-dir", default="var/demo")
    demo.add_argument("--port", type=int, default=8000)

    branches = sub.add_parser("branches", help="administer branches")
    br_sub = branches.add_subparsers(dest="branches_command", required=True)
    add = br_sub.add_parser("add", help="register a branch")
    add.add_argument("code")
    add.add_argument("--name", default="")
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--format", default=None, help="store format, e.g. minimarket")
    add.add_argument("--zone", default=None, help="price zone")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from pathlib import Path

        from central.demo import run_demo

        sys.exit(run_demo(Path(args.data_dir), http_port=args.port))
    settings = load_settings(args.config)
    code = 0
    if args.command == "db":
        asyncio.run(_db_upgrade(settings, args.revision))
    elif args.command == "serve":
        _serve(settings)
    elif args.command == "ingest":
        asyncio.run(_ingest(settings, args.workers))
    elif args.command == "branches":
        code = asyncio.run(_branches_add(settings, args))
    sys.exit(code)
