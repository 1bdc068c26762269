"""What ``run`` checks before it opens a device or changes the database: each a
mistake of the installation that would otherwise show only later, as a wrong reason
(a missing credentials file read as a NATS error, another branch's database as a
permissions violation). A failed check is ``StartRefused``: one line, exit 2."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from contextlib import closing
from pathlib import Path

from branch_agent.backup import database_branch
from branch_agent.instance import StartRefused
from branch_agent.settings import AgentSettings
from protocol.tls_files import ca_problem, certificate_problem

__all__ = ["check_before_start", "creds_problem", "orphaned_printer_work"]

_JWT = "-----BEGIN NATS USER JWT-----"
_SEED = "-----BEGIN USER NKEY SEED-----"


def creds_problem(path: str) -> str | None:
    """Why the NATS credentials file at ``path`` cannot be used, or None: it must be
    readable and hold a user JWT and a user seed (as ``nsc`` and central write it)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return f"nats_creds file {path!r} does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"nats_creds file {path!r} cannot be read: {reason}"
    lines = [line.strip() for line in text.splitlines()]

    def after(marker: str) -> str:
        for n, line in enumerate(lines):
            if marker in line:
                return next((x for x in lines[n + 1 :] if x), "")
        return ""

    jwt, seed = after(_JWT), after(_SEED)
    if not jwt or jwt.startswith("-----"):
        return f"nats_creds file {path!r} holds no user JWT (not a NATS .creds file)"
    if not seed.startswith("SU"):
        return f"nats_creds file {path!r} holds no user seed (not a NATS .creds file)"
    try:
        import nkeys

        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except Exception as exc:
        return f"nats_creds file {path!r}: its user seed is not valid ({type(exc).__name__})"
    return None


# Work only a till's own fiscal printer can finish, as (table, column the state is in,
# condition, what it is): printed, settled or compared with that printer by the agent
# (branch_agent.fiscal, shifts), for the tills of its config that have one. Columns an
# older database lacks (preflight runs before the upgrade) hold nothing pending.
_PRINTER_WORK = (
    ("sales", "status", "status = 'pending_fiscal'", "sale(s) waiting to be printed"),
    (
        "customer_returns",
        "status",
        "status = 'pending_fiscal'",
        "return(s) waiting for their storno receipt",
    ),
    ("cash_moves", "status", "status = 'pending'", "cash move(s) not settled"),
    (
        "customer_returns",
        "payout_status",
        "payout_status = 'pending'",
        "cash refund pay-out(s) not settled",
    ),
    ("shifts", "float_status", "float_status = 'pending'", "opening float(s) not deposited"),
    (
        "shifts",
        "z_status",
        "z_status = 'pending' AND closed_at IS NULL",
        "shift close(s) whose Z report is under way",
    ),
    (
        "sales",
        "unfiscal_check",
        "unfiscal_check = 'pending'",
        "sale(s) completed unfiscal, to compare with the printer",
    ),
    (
        "customer_returns",
        "unfiscal_check",
        "unfiscal_check = 'pending'",
        "return(s) completed unfiscal, to compare with the printer",
    ),
)


def orphaned_printer_work(settings: AgentSettings) -> str | None:
    """Why the database holds fiscal work for a till the config no longer gives a fiscal
    printer (its block removed, its id renamed, or its ``fiscal_printer`` taken out), or
    None. The agent prints, settles and compares a till's pending documents only on
    that till's configured printer: such work would stay pending for ever, its sales and
    returns never reaching central, and no one told."""
    path = settings.database_path
    if not path.exists():
        return None
    printers = {t.id for t in settings.tills if t.fiscal_printer is not None}
    found: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        columns: dict[str, set[str]] = {}
        for table, column, condition, what in _PRINTER_WORK:
            if table not in columns:
                columns[table] = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            if column not in columns[table]:
                continue
            rows = db.execute(
                f"SELECT till, count(*) FROM {table} WHERE {condition} GROUP BY till ORDER BY till"
            )
            for till, count in rows:
                if till not in printers:
                    found[till].append((count, what))
    if not found:
        return None
    configured = {t.id for t in settings.tills}
    problems = []
    for till, work in sorted(found.items()):
        total = sum(count for count, _ in work)
        where = (
            f"till {till}'s block in the config has no fiscal_printer"
            if till in configured
            else f"till {till} is not in the config (its [[agent.tills]] block removed, or its"
            " id changed)"
        )
        problems.append(
            f"{where}, but {path} holds {total} record(s) waiting for its fiscal printer ("
            + ", ".join(f"{count} {what}" for count, what in work)
            + f"): only that printer can finish them, and left so they would never be printed"
            " or reach central. Keep (or put back) its block, id"
            f" {till!r} with its fiscal_printer, until they are done: start the agent, which"
            " prints and settles them on that printer (GET /api/v1/manager/sales/pending and"
            " /api/v1/manager/returns/pending list the sales and returns); if the printer is"
            " gone for good, complete its sales and returns with POST"
            f" /api/v1/manager/sales/{till}/{{sale_id}}/complete-unfiscal (returns: /api/v1/"
            f"manager/returns/{till}/{{return_id}}/complete-unfiscal) and settle its cash"
            " moves, pay-outs, floats and Z report with POST"
            f" /api/v1/manager/tills/{till}/fiscal/settle-pending; then remove the block"
        )
    return "; ".join(problems)


def check_before_start(settings: AgentSettings) -> None:
    """Refuse to start on what cannot work: unusable credentials or TLS files, a
    database whose events belong to another branch code, fiscal work pending for a till
    the config no longer gives a fiscal printer."""
    problems = [creds_problem(settings.nats_creds)] if settings.nats_creds else []
    problems += [
        ca_problem("nats_tls_ca", settings.nats_tls_ca),
        certificate_problem(
            "nats_tls_cert", settings.nats_tls_cert, "nats_tls_key", settings.nats_tls_key
        ),
        # Else uvicorn fails on them only after the devices and the NATS link are up.
        certificate_problem(
            "http_tls_cert", settings.http_tls_cert, "http_tls_key", settings.http_tls_key
        ),
    ]
    found = [p for p in problems if p]
    if found:
        raise StartRefused("; ".join(found))
    other = database_branch(settings.database_path, settings.branch)
    if other is not None:
        raise StartRefused(
            f"{settings.database_path} was made for branch {other!r}, not {settings.branch!r} "
            f"(the branch setting): its events are recorded under {other!r} and can only "
            f"ever go up as {other!r}. If {other!r} was a typo, move agent.db (with its "
            "-wal and -shm files) aside and start again on an empty data_dir (the events "
            "in it will not reach central: note what they were); if this store is "
            f"{other!r}, correct the branch setting"
        )
    orphaned = orphaned_printer_work(settings)
    if orphaned is not None:
        raise StartRefused(orphaned)
