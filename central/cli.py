"""``python -m central``: run the API or ingest workers, migrate, administer branches."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from central.settings import CentralSettings, load_settings
from protocol.cli import run_cli
from protocol.config import SettingsError, unknown_env_settings

__all__ = ["main"]

log = logging.getLogger("central.cli")


def _print(obj: Any) -> None:
    print(json.dumps(obj, default=_json_value))


def _json_value(value: Any) -> Any:
    """Times as the API writes them (ISO 8601, ``2026-11-29T22:54:56.165235Z``), not
    ``str()``'s ``2026-11-29 22:54:56.165235+00:00`` beside them in other commands."""
    import msgspec

    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return str(value)


async def _db_upgrade(settings: CentralSettings, revision: str) -> int:
    from alembic.util import CommandError

    from central.db import MigrationRefused, current_revisions, upgrade

    before = await current_revisions(settings.database_url)
    try:
        await upgrade(settings.database_url, revision)
    except (MigrationRefused, CommandError) as exc:
        print(f"db upgrade: {exc}", file=sys.stderr)
        return 2
    # What the database is at now, not the name asked for ("heads", a revision passed);
    # "upgraded": false when it was there already (nothing was done).
    at = await current_revisions(settings.database_url)
    _print(
        {
            "database": settings.database_url.split("@")[-1],
            "upgraded": at != before,
            "from": ",".join(before) or "base",
            "upgraded_to": ",".join(at),
        }
    )
    return 0


async def _db_downgrade(settings: CentralSettings, revision: str, drop_records: bool) -> int:
    from alembic.util import CommandError

    from central.db import MigrationRefused, current_revisions, downgrade

    try:
        await downgrade(settings.database_url, revision, drop_records=drop_records)
    except (MigrationRefused, CommandError) as exc:
        print(f"db downgrade: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as refused:  # a migration that would lose records says why
        _print({"error": str(refused)})
        return 1
    at = await current_revisions(settings.database_url)
    _print(
        {
            "database": settings.database_url.split("@")[-1],
            "downgraded_to": ",".join(at) or "base",
        }
    )
    return 0


async def _db_partitions(settings: CentralSettings, args: argparse.Namespace) -> int:
    """Create the months ahead of the partitioned tables; report rows in DEFAULT."""
    from datetime import date

    from central.db import create_engine
    from central.partitions import maintain_partitions

    engine = create_engine(settings.database_url)
    try:
        since = date.fromisoformat(f"{args.since}-01") if args.since else None
        statuses = await maintain_partitions(
            engine, ahead=args.ahead, move_default=args.move_default, since=since
        )
        for status in statuses:
            _print(status.as_dict())
        if not statuses:
            _print({"partitioned_tables": [], "database": engine.dialect.name})
        # Non-zero while rows sit in DEFAULT or a month could not be made (lock not
        # granted in time), so a scheduled run can raise an alarm.
        return 1 if any(s.default_rows or s.lock_timeouts for s in statuses) else 0
    finally:
        await engine.dispose()


def _serve(settings: CentralSettings) -> None:
    import uvicorn

    from central.app import create_app
    from central.db import is_sqlite, upgrade

    if is_sqlite(settings.database_url):
        # The embedded single-machine setup (`make run`, a first try) migrates its own
        # file; a PostgreSQL schema is migrated only by `db upgrade` (checked in main).
        asyncio.run(upgrade(settings.database_url))
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="info",
        timeout_keep_alive=settings.http_timeout_keep_alive_s,
        # HTTPS when configured (README "Security"); bounded concurrency and headers.
        ssl_certfile=settings.http_tls_cert or None,
        ssl_keyfile=settings.http_tls_key or None,
        limit_concurrency=1000,
        h11_max_incomplete_event_size=64 * 1024,
    )


async def _ingest(settings: CentralSettings, workers: int) -> None:
    from sqlalchemy.engine import make_url

    from central.runtime import CentralRuntime
    from protocol.subjects import INGEST_DURABLE, UP_STREAM

    # A batch allocates hundreds of thousands of short-lived objects (messages, events,
    # rows): with the default thresholds the cyclic collector ran every 700 of them and
    # now and then walked everything alive. Start-up's objects are frozen out of its
    # way and collections are rarer (bench.sync_ingest: about +8% receipts/s).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    runtime = CentralRuntime(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runtime.request_stop)
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    nats_at = settings.nats_url or f"embedded nats-server on port {settings.nats_server_port}"
    # One line at start and at stop: what a process supervisor's log shows of it.
    log.info(
        "ingest: %d worker(s), database %s, NATS %s, consumer %s/%s",
        workers,
        shown,
        nats_at,
        UP_STREAM,
        INGEST_DURABLE,
    )
    await runtime.start(ingest_workers=workers)
    try:
        await runtime.wait_stopped()
    finally:
        await runtime.stop()
        stored = sum(w.stats.stored for w in runtime.workers)
        log.info("ingest: stopped (%d event(s) stored by this process)", stored)


async def _branches_add(settings: CentralSettings, args: argparse.Namespace) -> int:
    """Register a branch and print its NATS credentials (a .creds file) as JSON."""
    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError
    from central.services.nats_auth import chain_issuer, register_branch, write_branch_creds

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            issuer = await chain_issuer(session, settings)
            reg = await register_branch(
                session,
                issuer,
                code=args.code,
                name=args.name or args.code,
                timezone=args.timezone,
                format_code=args.format,
                price_zone=args.zone,
            )
        creds_file = write_branch_creds(issuer, reg.branch.code, reg.user)
        _print(
            {
                "branch": reg.branch.code,
                "name": reg.branch.name,
                "timezone": reg.branch.timezone,
                "nats_url": _branch_nats_url(settings),
                "creds_file": str(creds_file.resolve()),
            }
        )
        return 0
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


async def _branches_list(settings: CentralSettings) -> int:
    """Every registered branch, one JSON object a line in code order (as ``users list``)."""
    from sqlalchemy import select

    from central.db import create_engine, create_sessionmaker
    from central.models import Branch

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            branches = (await session.scalars(select(Branch).order_by(Branch.code))).all()
        for b in branches:
            _print(
                {
                    "branch": b.code,
                    "name": b.name,
                    "timezone": b.timezone,
                    "format": b.format_code,
                    "zone": b.price_zone,
                    "active": b.active,
                    "created_at": b.created_at,
                    "revoked_at": b.revoked_at,
                }
            )
        return 0
    finally:
        await engine.dispose()


def _branch_nats_url(settings: CentralSettings) -> str:
    embedded = f"nats://127.0.0.1:{settings.nats_server_port}"
    return settings.nats_public_url or settings.nats_url or embedded


async def _branches_revoke(settings: CentralSettings, args: argparse.Namespace) -> int:
    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError
    from central.services.nats_auth import (
        chain_issuer,
        client_tls_options,
        push_account_jwt,
        revoke_branch,
    )

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            issuer = await chain_issuer(session, settings)
            account_jwt = await revoke_branch(session, issuer, args.code)
        pushed = await push_account_jwt(
            issuer, _branch_nats_url(settings), account_jwt, **client_tls_options(settings)
        )
        _print({"branch": args.code, "revoked": True, "pushed_to_nats": pushed})
        return 0
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


async def _branch_admin(
    settings: CentralSettings, act: Callable[[Any], Awaitable[dict[str, Any]]]
) -> int:
    """Run ``act(sessionmaker)`` and print its answer, or the refusal (exit status 1)."""
    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError

    engine = create_engine(settings.database_url)
    try:
        _print(await act(create_sessionmaker(engine)))
        return 0
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


async def _branches_credentials(settings: CentralSettings, args: argparse.Namespace) -> int:
    """New credentials (written to ``<issuer dir>/branches/<code>.creds``), or the list."""
    from msgspec import to_builtins

    from central.services.nats_auth import (
        chain_issuer,
        client_tls_options,
        issue_branch_credentials,
        list_branch_credentials,
        settle_issued,
        write_branch_creds,
    )

    async def act(sessionmaker: Any) -> dict[str, Any]:
        if args.list:
            async with sessionmaker() as session:
                listed = await list_branch_credentials(session, args.code)
            return {"branch": args.code, "credentials": to_builtins(listed)}
        async with sessionmaker() as session, session.begin():
            issuer = await chain_issuer(session, settings)
            issued = await issue_branch_credentials(
                session, issuer, args.code, retire_previous=args.retire_previous
            )
        creds_file = write_branch_creds(issuer, args.code, issued.user)
        pushed = await settle_issued(
            issuer, issued, _branch_nats_url(settings), **client_tls_options(settings)
        )
        return {
            "branch": args.code,
            "nats_user": issued.user.public_key,
            "creds_file": str(creds_file.resolve()),
            "retired": issued.retired,
            "pushed_to_nats": pushed,
        }

    return await _branch_admin(settings, act)


async def _branches_reinstate(settings: CentralSettings, args: argparse.Namespace) -> int:
    """Lift a revocation: new credentials file, the branch's dead letters replayed."""
    from central.services.dead_letters import replay_all
    from central.services.nats_auth import (
        chain_issuer,
        client_tls_options,
        reinstate_branch,
        settle_issued,
        write_branch_creds,
    )

    async def act(sessionmaker: Any) -> dict[str, Any]:
        async with sessionmaker() as session, session.begin():
            issuer = await chain_issuer(session, settings)
            issued = await reinstate_branch(session, issuer, args.code)
        await settle_issued(
            issuer, issued, _branch_nats_url(settings), **client_tls_options(settings)
        )
        user = issued.user
        creds_file = write_branch_creds(issuer, args.code, user)
        replayed = await replay_all(sessionmaker, branch=args.code)
        return {
            "branch": args.code,
            "reinstated": True,
            "nats_user": user.public_key,
            "creds_file": str(creds_file.resolve()),
            "replayed": sum(1 for r in replayed if r.status == "replayed"),
            "still_open": sum(1 for r in replayed if r.status == "open"),
        }

    return await _branch_admin(settings, act)


async def _users(settings: CentralSettings, args: argparse.Namespace) -> int:
    """``users add|token|revoke|list``: a token is printed once, never stored."""
    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError
    from central.services import users

    days = args.expires_in_days if hasattr(args, "expires_in_days") else None
    if days is None:
        days = settings.api_token_ttl_days or None
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            if args.users_command == "add":
                issued = await users.create_user(
                    session, name=args.name, role=args.role, expires_in_days=days
                )
            elif args.users_command == "token":
                issued = await users.issue_token(session, name=args.name, expires_in_days=days)
            elif args.users_command == "revoke":
                user = await users.revoke_user(session, name=args.name)
                _print({"user": user.name, "revoked_at": user.revoked_at})
                return 0
            else:
                rows, _total = await users.list_users(session, limit=10000)
                for row in rows:
                    _print({"user": row.name, "role": row.role, "revoked_at": row.revoked_at})
                return 0
        _print(
            {
                "user": issued.user.name,
                "role": issued.user.role,
                "token": issued.token,
                "expires_at": issued.expires_at,
            }
        )
        return 0
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


async def _seed_demo(settings: CentralSettings, branches: Sequence[str]) -> int:
    """``seed-demo``: the demo catalog, format and prices at central (``central.demo_seed``)."""
    import msgspec

    from central.db import create_engine, create_sessionmaker
    from central.demo_seed import seed_demo
    from central.errors import DomainError

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            report = await seed_demo(session, branches=branches)
        _print({**msgspec.to_builtins(report), "changed": report.changed})
        return 0
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


async def _nats_server_config(settings: CentralSettings, resolver_dir: str) -> int:
    """The operator/resolver block to put into the config of production nats-servers:
    of the chain's issuer when the database knows one (a host without the shared
    nats_issuer_dir refuses, instead of printing a config for a new operator that the
    rest of the chain does not use); of a new chain's first issuer otherwise (the
    bootstrap, also before the database exists)."""
    from central.db import create_engine, create_sessionmaker
    from central.services.nats_auth import IssuerNotTheChains, chain_issuer, issuer_for

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            issuer = await chain_issuer(session, settings)
    except IssuerNotTheChains as exc:
        print(f"refused: {exc.detail}", file=sys.stderr)
        return 2
    except Exception:  # no database or no schema yet: a new chain's first issuer
        issuer = issuer_for(settings)
    finally:
        await engine.dispose()
    print(issuer.server_config(Path(resolver_dir)))
    print(f"# central's credentials: {issuer.central_creds_file().resolve()}", file=sys.stderr)
    return 0


# Written by `make run` (central demo); the admin commands use it when no config is given.
DEMO_SETTINGS = Path("var/demo/central.toml")


async def _reports(settings: CentralSettings, command: str) -> int:
    """``rebuild``: recompute the report summary tables from the raw records in one
    transaction. ``apply-backlog``: add the summary backlog to them now (PostgreSQL;
    after any applier at work)."""
    from central.db import create_engine
    from central.reports.backlog import apply_summary_backlog
    from central.reports.rebuild import rebuild

    engine = create_engine(settings.database_url)
    try:
        if command == "apply-backlog":
            _print({"applied": await apply_summary_backlog(engine, wait=True)})
        else:
            _print({"rebuilt": await rebuild(engine)})
        return 0
    finally:
        await engine.dispose()


async def _stock_rebuild(settings: CentralSettings, verify_only: bool) -> int:
    from central.db import create_engine, create_sessionmaker
    from central.services.stock import rebuild_balances

    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session, session.begin():
            report = await rebuild_balances(session, verify_only=verify_only)
        _print(
            {
                "balances": report.balances,
                "movements": report.movements,
                "agree": report.agree,
                "rebuilt": report.rebuilt,
                "mismatches": [
                    {"branch": b, "sku": s, "field": f, "projection": p, "ledger": ledger}
                    for b, s, f, p, ledger in report.mismatches[:100]
                ],
            }
        )
        # --verify: non-zero when the projection disagrees with the ledger.
        return 1 if verify_only and not report.agree else 0
    finally:
        await engine.dispose()


async def _dead_letters(settings: CentralSettings, args: argparse.Namespace) -> int:
    import msgspec

    from central.db import create_engine, create_sessionmaker
    from central.errors import DomainError
    from central.services.dead_letters import (
        discard_dead_letter,
        list_dead_letters,
        replay_all,
        replay_dead_letter,
    )

    engine = create_engine(settings.database_url)
    try:
        sessionmaker = create_sessionmaker(engine)
        if args.dead_letters_command == "list":
            async with sessionmaker() as session:
                page = await list_dead_letters(
                    session,
                    status=args.status or None,
                    branch=args.branch,
                    limit=args.limit,
                    offset=0,
                )
            _print(
                {
                    "total": page.total,
                    "items": [msgspec.to_builtins(item) for item in page.items],
                }
            )
            return 0
        if args.dead_letters_command == "discard":
            async with sessionmaker() as session:
                letter = await discard_dead_letter(session, args.id)
            _print({"id": letter.id, "status": letter.status})
            return 0
        if args.all:
            results = await replay_all(sessionmaker, branch=args.branch)
        elif args.id is not None:
            results = [await replay_dead_letter(sessionmaker, args.id)]
        else:
            _print({"error": "give a dead letter id or --all"})
            return 2
        _print([{"id": r.id, "status": r.status, "reason": r.reason} for r in results])
        return 0 if all(r.status == "replayed" for r in results) else 1
    except DomainError as exc:
        _print({"error": exc.detail, "field": exc.field})
        return 1
    finally:
        await engine.dispose()


async def _database_fault(url: str, *, need_schema: bool, need_current: bool = False) -> str | None:
    """Why the database cannot be used (one line naming it), or None: checked once
    before a command, so a server that is down (or a database never migrated, for a
    command that does not migrate it) is not a traceback from deep inside.
    ``need_current``: also refuse a schema behind this release's (a newer one is
    fine: an older release's process runs on it during a rolling update)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from central.db import create_engine, current_revisions, schema_behind

    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (OSError, DBAPIError, TimeoutError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return f"database {shown}: cannot connect: {reason or type(exc).__name__}"
    finally:
        await engine.dispose()
    if not need_schema:
        return None
    at = await current_revisions(url)
    if not at:
        return f"database {shown} has no schema: run `python -m central db upgrade` first"
    if need_current and schema_behind(url, at):
        return (
            f"database {shown} schema is behind this release (at {', '.join(at)}): "
            "run `python -m central db upgrade` first"
        )
    return None


# BACKROOM_* variables that are not central's settings: the agent's, the config file's,
# the tests', the demo's ports.
_OTHER_ENV_PREFIXES = (
    "BACKROOM_AGENT_",
    "BACKROOM_CENTRAL_CONFIG",
    "BACKROOM_TEST_",
    "BACKROOM_DEMO_",
)


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(text)
    return value


def _positive(text: str) -> int:
    """A count of at least 1: ``ingest --workers 0`` ran for ever and stored nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m central", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (section [central])")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="migrate to the newest schema")
    up.add_argument("revision", nargs="?", default="heads")
    down = db_sub.add_parser(
        "downgrade", help="migrate back to an older schema (rolling a release back)"
    )
    down.add_argument("revision", help="the older release's revision, e.g. 1601")
    down.add_argument(
        "--drop-records",
        action="store_true",
        help="allow undoing a revision that drops recorded data (README: db downgrade)",
    )
    parts = db_sub.add_parser(
        "partitions", help="create monthly partitions ahead, report rows in DEFAULT (PostgreSQL)"
    )
    parts.add_argument("--ahead", type=int, default=3, help="months after this one (default 3)")
    parts.add_argument(
        "--move-default",
        action="store_true",
        help="also create the months whose rows sit in DEFAULT and move those rows there",
    )
    parts.add_argument("--since", help="first month to create, YYYY-MM (before loading history)")

    sub.add_parser("serve", help="run the web API (and an ingest worker if configured)")
    ingest = sub.add_parser("ingest", help="run ingest workers (no web API)")
    ingest.add_argument("--workers", type=_positive, default=1, help="worker tasks (default 1)")

    demo = sub.add_parser("demo", help="run the whole chain on embedded defaults (make run)")
    demo.add_argument("--data-dir", default="var/demo")
    # Defaults from BACKROOM_DEMO_* (make run passes the environment through), so two
    # demos, or a demo beside something on 8000/4222, can run on one machine.
    for flag, env, default, what in (
        ("--port", "BACKROOM_DEMO_PORT", 8000, "central's API"),
        ("--nats-port", "BACKROOM_DEMO_NATS_PORT", 4222, "the NATS server"),
        ("--agent-base-port", "BACKROOM_DEMO_AGENT_BASE_PORT", 8101, "B001's till API, B002 +1"),
        (
            "--device-base-port",
            "BACKROOM_DEMO_DEVICE_BASE_PORT",
            21010,
            "B001's device simulators (4 ports), B002 +10",
        ),
    ):
        # A string default goes through type= too, only when `demo` is the command.
        demo.add_argument(
            flag,
            type=_port,
            default=os.environ.get(env) or str(default),
            help=f"port of {what} (default {default}, or ${env})",
        )
    seed = sub.add_parser(
        "seed-demo",
        help="give central the demo catalog: products, format demo, chain prices (make run)",
    )
    seed.add_argument(
        "--branch",
        action="append",
        default=[],
        help="a branch registered without a format to move into format demo (repeatable)",
    )

    branches = sub.add_parser("branches", help="administer branches")
    br_sub = branches.add_subparsers(dest="branches_command", required=True)
    add = br_sub.add_parser("add", help="register a branch")
    add.add_argument("code")
    add.add_argument("--name", default="")
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--format", default=None, help="store format, e.g. minimarket")
    add.add_argument("--zone", default=None, help="price zone")
    br_sub.add_parser("list", help="list the registered branches (one JSON line each)")
    revoke = br_sub.add_parser("revoke", help="revoke a branch (NATS and central refuse it)")
    revoke.add_argument("code")
    creds = br_sub.add_parser(
        "credentials", help="issue new NATS credentials of a branch (or --list them)"
    )
    creds.add_argument("code")
    # Both given, --list won and the rotation asked for silently did not happen.
    creds_mode = creds.add_mutually_exclusive_group()
    creds_mode.add_argument(
        "--retire-previous",
        action="store_true",
        help="NATS refuses the branch's earlier credentials from now on (rotation)",
    )
    creds_mode.add_argument("--list", action="store_true", help="list the issued credentials only")
    reinstate = br_sub.add_parser(
        "reinstate",
        help="lift a branch's revocation: new credentials, its dead letters replayed",
    )
    reinstate.add_argument("code")

    users = sub.add_parser("users", help="API users and tokens")
    us_sub = users.add_subparsers(dest="users_command", required=True)
    uadd = us_sub.add_parser("add", help="create a user and print its token once")
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, choices=["admin", "merchandiser", "analyst"])
    uadd.add_argument("--expires-in-days", type=int, default=None)
    utok = us_sub.add_parser("token", help="print one more token of a user")
    utok.add_argument("name")
    utok.add_argument("--expires-in-days", type=int, default=None)
    urev = us_sub.add_parser("revoke", help="revoke a user and all its tokens")
    urev.add_argument("name")
    us_sub.add_parser("list", help="list users")

    nats_cmd = sub.add_parser("nats", help="NATS auth of the servers")
    nats_sub = nats_cmd.add_subparsers(dest="nats_command", required=True)
    conf = nats_sub.add_parser("server-config", help="print the operator/resolver config block")
    conf.add_argument("--resolver-dir", default="/var/lib/nats/resolver")

    reports = sub.add_parser("reports", help="report summary tables")
    rep_sub = reports.add_subparsers(dest="reports_command", required=True)
    rep_sub.add_parser("rebuild", help="recompute the summary tables from the raw records")
    rep_sub.add_parser(
        "apply-backlog", help="add the summary backlog to the tables now (PostgreSQL)"
    )

    stock = sub.add_parser("stock", help="the stock ledger and its balance projection")
    stock_sub = stock.add_subparsers(dest="stock_command", required=True)
    rebuild = stock_sub.add_parser("rebuild", help="rebuild the balances from the ledger")
    rebuild.add_argument(
        "--verify",
        action="store_true",
        help="only compare the balances with the ledger (exit 1 when they disagree)",
    )

    letters = sub.add_parser("dead-letters", help="messages that could not be ingested")
    dl_sub = letters.add_subparsers(dest="dead_letters_command", required=True)
    listing = dl_sub.add_parser("list", help="the dead letters, oldest first (no raw bytes)")
    listing.add_argument("--status", default="open", help="open (default), replayed, discarded")
    listing.add_argument("--branch")
    listing.add_argument("--limit", type=_positive, default=100)
    replay = dl_sub.add_parser("replay", help="process stored dead letters again after a fix")
    replay.add_argument("id", type=int, nargs="?")
    replay.add_argument("--all", action="store_true", help="every open dead letter")
    replay.add_argument("--branch", help="with --all: only this branch's letters")
    discard = dl_sub.add_parser("discard", help="decide not to store a message (kept)")
    discard.add_argument("id", type=int)
    from central.masterdata_cli import add_masterdata_commands

    add_masterdata_commands(sub)
    return parser


def _tls_problem(settings: CentralSettings, *, serve: bool) -> str | None:
    """The first TLS file a long-running process cannot use, before it starts (else a
    traceback once uvicorn, the embedded nats-server or the NATS link loads it)."""
    from protocol.tls_files import ca_problem, certificate_problem

    s = settings
    problems = [
        ca_problem("nats_tls_ca", s.nats_tls_ca),
        certificate_problem("nats_tls_cert", s.nats_tls_cert, "nats_tls_key", s.nats_tls_key),
    ]
    if serve:
        problems.append(
            certificate_problem("http_tls_cert", s.http_tls_cert, "http_tls_key", s.http_tls_key)
        )
    if serve and not s.nats_url and s.nats_server_tls_cert and not s.nats_server_tls_key:
        # nats-server reads the key from its own file only.
        problems.append("nats_server_tls_cert is set without nats_server_tls_key: set both")
    if serve and not s.nats_url:  # the embedded nats-server's own certificate
        problems.append(
            certificate_problem(
                "nats_server_tls_cert",
                s.nats_server_tls_cert,
                "nats_server_tls_key",
                s.nats_server_tls_key,
            )
        )
    return next((p for p in problems if p is not None), None)


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from central.demo import run_demo

        sys.exit(
            run_demo(
                Path(args.data_dir),
                http_port=args.port,
                nats_port=args.nats_port,
                agent_base_port=args.agent_base_port,
                device_base_port=args.device_base_port,
            )
        )
    config = args.config
    if (
        config is None
        and args.command in ("branches", "users", "nats")
        and "BACKROOM_CENTRAL_CONFIG" not in os.environ
        and DEMO_SETTINGS.exists()
    ):
        # Run from the project root while `make run` is up: administer that chain.
        config = str(DEMO_SETTINGS)
    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"settings: {exc} (a --config FILE, or BACKROOM_* variables)", file=sys.stderr)
        sys.exit(2)
    for name in unknown_env_settings(
        CentralSettings, os.environ, "BACKROOM_", other_prefixes=_OTHER_ENV_PREFIXES
    ):
        # Warned, not refused: the environment is shared with other programs.
        print(f"settings: warning: {name} is no setting, ignored", file=sys.stderr)
    if args.command in ("serve", "ingest"):
        problem = _tls_problem(settings, serve=args.command == "serve")
        if problem is not None:
            print(f"settings: {problem}", file=sys.stderr)
            sys.exit(2)
    if args.command != "nats":
        from central.db import is_sqlite

        # Only `db` and serve on the embedded SQLite migrate; serve and ingest need
        # this release's schema (a worker on an older one fails every batch).
        runs = args.command in ("serve", "ingest")
        need_schema = args.command != "db" and not (
            args.command == "serve" and is_sqlite(settings.database_url)
        )
        fault = asyncio.run(
            _database_fault(settings.database_url, need_schema=need_schema, need_current=runs)
        )
        if fault is not None:
            if (
                config is None
                and "BACKROOM_CENTRAL_CONFIG" not in os.environ
                and "BACKROOM_DATABASE_URL" not in os.environ
                and DEMO_SETTINGS.exists()
            ):
                # `dead-letters list` beside `make run` read the default database, and
                # the advice to `db upgrade` it made a second, empty chain.
                fault += f" (make run's chain is in var/demo: --config {DEMO_SETTINGS})"
            print(fault, file=sys.stderr)
            sys.exit(2)
    code = 0
    if args.command == "db" and args.db_command == "partitions":
        code = asyncio.run(_db_partitions(settings, args))
    elif args.command == "db" and args.db_command == "downgrade":
        code = asyncio.run(_db_downgrade(settings, args.revision, args.drop_records))
    elif args.command == "db":
        code = asyncio.run(_db_upgrade(settings, args.revision))
    elif args.command == "serve":
        _serve(settings)
    elif args.command == "ingest":
        asyncio.run(_ingest(settings, args.workers))
    elif args.command == "branches" and args.branches_command == "list":
        code = asyncio.run(_branches_list(settings))
    elif args.command == "branches" and args.branches_command == "revoke":
        code = asyncio.run(_branches_revoke(settings, args))
    elif args.command == "branches" and args.branches_command == "credentials":
        code = asyncio.run(_branches_credentials(settings, args))
    elif args.command == "branches" and args.branches_command == "reinstate":
        code = asyncio.run(_branches_reinstate(settings, args))
    elif args.command == "branches":
        code = asyncio.run(_branches_add(settings, args))
    elif args.command == "seed-demo":
        code = asyncio.run(_seed_demo(settings, args.branch))
    elif args.command in ("import", "export"):
        from central.masterdata_cli import run_masterdata_command

        code = run_masterdata_command(settings, args)
    elif args.command == "users":
        code = asyncio.run(_users(settings, args))
    elif args.command == "nats":
        code = asyncio.run(_nats_server_config(settings, args.resolver_dir))
    elif args.command == "reports":
        code = asyncio.run(_reports(settings, args.reports_command))
    elif args.command == "stock":
        code = asyncio.run(_stock_rebuild(settings, args.verify))
    elif args.command == "dead-letters":
        code = asyncio.run(_dead_letters(settings, args))
    sys.exit(code)
