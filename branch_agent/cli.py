"""``python -m branch_agent``: run the agent, and a technician's and manager's view of it."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from branch_agent.settings import AgentSettings, load_settings
from protocol.cli import run_cli
from protocol.config import SettingsError, unknown_env_settings

__all__ = ["main"]

_DOC_TYPES = ("goods_receipt", "write_off", "transfer_out", "transfer_in", "supplier_return")
_TAKES_OUT = ("write_off", "transfer_out", "supplier_return")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m branch_agent", description=__doc__)
    parser.add_argument("--config", help="agent TOML file (section [agent])")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the till API and sync until stopped")
    sub.add_parser("db-upgrade", help="migrate the local database")
    status = sub.add_parser("status", help="link, backlog, last sync, versions, devices")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    backup = sub.add_parser(
        "backup", help="copy the database to a new file (safe while the agent runs)"
    )
    backup.add_argument("dest", type=Path, help="the backup file to write (must not exist)")
    restore = sub.add_parser(
        "restore", help="put a backup in place of the database (the agent stopped)"
    )
    restore.add_argument("backup", type=Path, help="a file written by 'backup'")
    sim = sub.add_parser("till-sim", help="simulate a till posting sales to an agent")
    sim.add_argument(
        "--url", required=True, help="the agent's till API, e.g. http://127.0.0.1:8101"
    )
    sim.add_argument("--token", required=True)
    sim.add_argument("--interval", type=float, default=3.0, help="seconds between sales")
    sim.add_argument("--seed", type=int, default=None)

    fiscal = sub.add_parser("fiscal", help="a till's fiscal printer (through the running agent)")
    fiscal_sub = fiscal.add_subparsers(dest="fiscal_command", required=True)
    finish = fiscal_sub.add_parser(
        "finish-open",
        help="finish the receipt left open on the till's printer (cancelled if nothing was"
        " paid, else the rest paid in cash and closed); recorded",
    )
    finish.add_argument("till")
    finish.add_argument("--reason", required=True)
    stock = sub.add_parser("stock", help="store stock documents (through the running agent)")
    stock_sub = stock.add_subparsers(dest="stock_command", required=True)
    post = stock_sub.add_parser("post", help="post a document from a JSON file ('-': stdin)")
    post.add_argument("file", help='{"doc_type": "goods_receipt", "supplier": ..., "lines": [...]}')
    for doc_type in _DOC_TYPES:
        one = stock_sub.add_parser(
            doc_type.replace("_", "-"), help=f"post a {doc_type.replace('_', ' ')}"
        )
        one.add_argument(
            "lines", nargs="+", help="SKU=QUANTITY or SKU=QUANTITY@UNIT_COST (cost in cents)"
        )
        one.add_argument(
            "--id",
            dest="document_id",
            default=None,
            help="document id, e.g. the delivery note's number: running the command again"
            " (a retry) gives the original",
        )
        one.add_argument("--supplier")
        one.add_argument("--branch", dest="counterpart_branch", help="the other branch")
        one.add_argument("--ref", dest="transfer_ref", help="the sending branch's transfer out")
        one.add_argument("--reason")
        one.add_argument("--author", default="")
        one.add_argument(
            "--again",
            action="store_true",
            help="post it although it repeats a document posted minutes ago without --id"
            + (", or a transfer already taken in" if doc_type == "transfer_in" else ""),
        )
        if doc_type in _TAKES_OUT:
            one.add_argument(
                "--allow-negative",
                action="store_true",
                help="take out more than the stock on hand (the books are wrong)",
            )
    take = stock_sub.add_parser("stocktake", help="open, count, post a stocktake")
    take_sub = take.add_subparsers(dest="stocktake_command", required=True)
    opened = take_sub.add_parser("open")
    opened.add_argument("--id", dest="document_id", default=None)
    opened.add_argument("--author", default="")
    count = take_sub.add_parser("count", help="record a count sheet")
    count.add_argument("document_id")
    count.add_argument("sheet")
    count.add_argument("lines", nargs="+", help="SKU=COUNTED (no cost: a count takes none)")
    posted = take_sub.add_parser("post")
    posted.add_argument("document_id")
    bal = stock_sub.add_parser("balances", help="stock on hand")
    bal.add_argument("sku", nargs="*")
    return parser


def _usage_error(message: str) -> NoReturn:
    """A mistake on the command line: said on stderr, exit 2 (as argparse does)."""
    print(f"python -m branch_agent: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _lines(specs: list[str], key: str, *, costs: bool = True) -> list[dict[str, Any]]:
    """``SKU=QUANTITY[@UNIT_COST]`` (``SKU=COUNTED`` without ``costs``) as the agent's
    lines; a line it would refuse is a usage error here, before anything is sent."""
    import re

    from branch_agent.stock import QUANTITY_PATTERN

    form = "SKU=QUANTITY[@UNIT_COST]" if costs else "SKU=COUNTED"
    lines = []
    for spec in specs:
        sku, sep, rest = spec.partition("=")
        if not sep or not sku or not rest:
            _usage_error(f"bad line {spec!r}: {form}")
        quantity, at, cost = rest.partition("@")
        if at and not costs:
            _usage_error(f"bad line {spec!r}: a count takes no cost, {form}")
        if not re.fullmatch(QUANTITY_PATTERN, quantity):
            _usage_error(
                f"bad quantity {quantity!r} in {spec!r}: decimal text with a dot and up to "
                "3 decimals, e.g. 5 or 0.754"
            )
        line: dict[str, Any] = {"sku": sku, key: quantity}
        if at:
            # Whole cents, as the API takes it. "0.33" is refused rather than read as
            # euros: "@70" is 70 cents, and "@70.00" meaning 100 times more is a trap.
            if not cost.isascii() or not cost.isdigit():
                _usage_error(
                    f"bad unit cost {cost!r} in {spec!r}: a whole number of cents (0.33 is @33)"
                )
            line["unit_cost"] = int(cost)
        lines.append(line)
    return lines


def _document_file(name: str) -> dict[str, Any]:
    """The JSON object of ``stock post FILE`` ('-': stdin); a file that cannot be read
    or holds no JSON object is a usage error, before anything is sent (it was a
    traceback)."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _usage_error(f"cannot read {name!r}: {exc}")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        _usage_error(f"{name!r} is not JSON: {exc}")
    if not isinstance(body, dict):
        _usage_error(
            f'{name!r} holds no JSON object: a document is {{"doc_type": ..., "lines": [...]}}'
        )
    return body


def _agent_host(settings: AgentSettings) -> str:
    return "127.0.0.1" if settings.http_host in ("0.0.0.0", "::", "") else settings.http_host


def _agent_url(settings: AgentSettings) -> str:
    scheme = "https" if settings.http_tls_cert else "http"
    return f"{scheme}://{_agent_host(settings)}:{settings.http_port}"


def _agent_client_options(settings: AgentSettings) -> dict[str, Any]:
    # The agent's own port on this machine: its certificate names the store server,
    # not 127.0.0.1, so it is not verified here.
    return {"verify": False} if settings.http_tls_cert else {}


def _agent_listening(settings: AgentSettings) -> bool:
    """Whether anything answers on the agent's port (HTTP, HTTPS or otherwise)."""
    import socket

    try:
        with socket.create_connection((_agent_host(settings), settings.http_port), timeout=2):
            return True
    except OSError:
        return False


def _stock(settings: AgentSettings, args: argparse.Namespace) -> int:
    if not settings.manager_token:
        print(
            "stock commands need the agent's manager_token (the manager API is off)",
            file=sys.stderr,
        )
        return 2
    method, path, body = "POST", "", None
    if args.stock_command == "post":
        path, body = "/api/v1/stock/documents", _document_file(args.file)
    elif args.stock_command == "balances":
        method, path = "GET", "/api/v1/stock/balances"
    elif args.stock_command == "stocktake":
        if args.stocktake_command == "open":
            path, body = (
                "/api/v1/stock/stocktakes",
                {
                    "document_id": args.document_id,
                    "author": args.author,
                },
            )
        elif args.stocktake_command == "count":
            path = f"/api/v1/stock/stocktakes/{args.document_id}/sheets"
            body = {"sheet": args.sheet, "lines": _lines(args.lines, "counted", costs=False)}
        else:
            path = f"/api/v1/stock/stocktakes/{args.document_id}/post"
    else:
        path = "/api/v1/stock/documents"
        body = {
            "doc_type": args.stock_command.replace("-", "_"),
            "lines": _lines(args.lines, "quantity"),
        }
        for key in ("document_id", "supplier", "counterpart_branch", "transfer_ref", "reason"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        body["author"] = args.author
        for flag in ("again", "allow_negative"):
            if getattr(args, flag, False):
                body[flag] = True
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("sku", s) for s in getattr(args, "sku", [])
    ]
    code, response = _call_agent(settings, method, path, body, params)
    if code == 0 and response.status_code == 200 and path == "/api/v1/stock/documents":
        print(
            f"document {response.json().get('document_id')} was already posted with this"
            " content: the original is shown, nothing new was recorded",
            file=sys.stderr,
        )
    return code


def _fiscal(settings: AgentSettings, args: argparse.Namespace) -> int:
    """``fiscal finish-open TILL --reason TEXT``: the manager route, through the agent
    (it holds the printer's port and records what was done)."""
    if not settings.manager_token:
        print(
            "fiscal commands need the agent's manager_token (the manager API is off)",
            file=sys.stderr,
        )
        return 2
    path = f"/api/v1/manager/tills/{args.till}/fiscal/finish-open-receipt"
    code, _response = _call_agent(settings, "POST", path, {"reason": args.reason}, [])
    return code


def _call_agent(
    settings: AgentSettings,
    method: str,
    path: str,
    body: Any,
    params: list[tuple[str, str | int | float | bool | None]],
) -> tuple[int, Any]:
    """One request to the running agent with the manager token; the answer printed."""
    import httpx

    headers = {"Authorization": f"Bearer {settings.manager_token}"}
    try:
        response = httpx.request(
            method,
            _agent_url(settings) + path,
            json=body,
            headers=headers,
            params=params,
            timeout=30,
            **_agent_client_options(settings),
        )
    except httpx.HTTPError as exc:
        print(f"the agent at {_agent_url(settings)} does not answer: {exc}", file=sys.stderr)
        return 1, None
    answer = response.json()
    print(json.dumps(answer, indent=2))
    if not response.is_success:
        # The problem details go to stdout (for scripts); a person reads this line.
        print(f"refused: {_problem_line(response.status_code, answer)}", file=sys.stderr)
        return 1, response
    return 0, response


def _problem_line(status: int, problem: Any) -> str:
    """One line from an RFC 9457 problem: status, title, detail and the fields at fault."""
    if not isinstance(problem, dict):
        return f"HTTP {status}"
    fields = [str(e.get("field")) for e in problem.get("errors") or () if isinstance(e, dict)]
    named = f" [{', '.join(fields)}]" if fields else ""
    return f"{status} {problem.get('title', '')}: {problem.get('detail', '')}{named}"


def _status(settings: AgentSettings, as_json: bool) -> int:
    import httpx
    import msgspec

    from branch_agent.status import AgentStatus, format_status

    try:
        response = httpx.get(
            _agent_url(settings) + "/health/status", timeout=5, **_agent_client_options(settings)
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        # Its own line, before the page (stdout may be buffered behind it in a pipe).
        sys.stdout.flush()
        print(f"the agent at {_agent_url(settings)} does not answer: {exc}", file=sys.stderr)
        sys.stderr.flush()
        return _offline_status(settings, as_json)
    if as_json:
        print(response.text)
    else:
        status = msgspec.json.decode(response.content, type=AgentStatus)
        print(format_status(status, settings.timezone))
    return 0


def _offline_status(settings: AgentSettings, as_json: bool) -> int:
    """The agent is not running: what its database says, as the running agent says it."""
    import msgspec

    from branch_agent.instance import describe_holder, lock_holder
    from branch_agent.status import format_status, offline_status

    path = settings.database_path
    holder = lock_holder(settings.data_path)
    if holder is not None:
        # Running, but not where this config says (another http_port, a hung process).
        print(
            f"an agent process holds {settings.data_path} ({describe_holder(holder)}) but "
            f"does not answer at {_agent_url(settings)}: what its database says follows",
            file=sys.stderr,
        )
    if not path.exists():
        print(f"no database at {path}", file=sys.stderr)
        return 2
    status = offline_status(path, settings.branch, settings.timezone, running=holder is not None)
    if as_json:
        print(msgspec.json.encode(status).decode())
    else:
        print(format_status(status, settings.timezone))
    return 1


def _backup(settings: AgentSettings, args: argparse.Namespace) -> int:
    """``backup`` and ``restore``: one JSON line, exit 1 with the reason when refused
    (exit 2 when another process holds the data directory: restore only, a backup
    reads)."""
    from branch_agent.backup import BackupError, backup_database, restore_database
    from branch_agent.instance import InstanceLock, InstanceLocked

    try:
        if args.command == "backup":
            done = backup_database(settings.database_path, args.dest)
        else:
            # The data directory's lock: a running agent holds it, whatever port it
            # listens on (a config with another http_port once let a restore through).
            with InstanceLock(settings.data_path, command="restore"):
                # Anything answering on its port counts as running too (an agent of a
                # version before the lock; an HTTPS port answers plain HTTP with an
                # error, which once read as "not running").
                if _agent_listening(settings):
                    raise BackupError(
                        f"the agent at {_agent_url(settings)} is running: stop it first"
                    )
                done = restore_database(args.backup, settings.database_path, branch=settings.branch)
    except InstanceLocked as exc:
        print(json.dumps({"error": str(exc), "holder": exc.holder}))
        return 2
    except BackupError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(done))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(_main, argv)


def _main(argv: Sequence[str] | None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command == "till-sim":
        from branch_agent.till_sim import TillRefused, TillSimulator

        stop = asyncio.Event()
        try:
            asyncio.run(
                TillSimulator(args.url, args.token, seed=args.seed).run(args.interval, stop)
            )
        except KeyboardInterrupt:
            pass
        except TillRefused as exc:
            print(f"till-sim: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"settings: {exc} (a --config FILE, or BACKROOM_AGENT_* variables)", file=sys.stderr)
        sys.exit(2)
    for name in unknown_env_settings(
        AgentSettings, os.environ, "BACKROOM_AGENT_", other_prefixes=("BACKROOM_AGENT_CONFIG",)
    ):
        # Warned, not refused: a typo would otherwise be ignored without a word.
        print(f"settings: warning: {name} is no setting, ignored", file=sys.stderr)
    from branch_agent.instance import InstanceLock, StartRefused

    if args.command == "run":
        from branch_agent.agent import Agent

        try:
            asyncio.run(Agent(settings).serve())
        except StartRefused as exc:
            print(f"run: refused: {exc}", file=sys.stderr)
            sys.exit(2)
    elif args.command == "db-upgrade":
        from branch_agent.db import upgrade

        try:
            with InstanceLock(settings.data_path, command="db-upgrade"):
                before, after = asyncio.run(upgrade(settings.database_path))
        except StartRefused as exc:
            print(f"db-upgrade: refused: {exc}", file=sys.stderr)
            sys.exit(2)
        # "upgraded": false when the database was current already (nothing done).
        shown = {
            "database": str(settings.database_path),
            "upgraded": after != before,
            "from": ",".join(before) or "base",
            "upgraded_to": ",".join(after),
        }
        print(json.dumps(shown))
    elif args.command == "status":
        sys.exit(_status(settings, args.json))
    elif args.command == "stock":
        sys.exit(_stock(settings, args))
    elif args.command == "fiscal":
        sys.exit(_fiscal(settings, args))
    elif args.command in ("backup", "restore"):
        sys.exit(_backup(settings, args))
    sys.exit(0)
