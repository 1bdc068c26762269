"""What ``run`` checks before it opens a device or changes the database: each a
mistake of the installation that would otherwise show only later, as a wrong reason
(a missing credentials file read as a NATS error, another branch's database as a
permissions violation). A failed check is ``StartRefused``: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

from branch_agent.backup import database_branch
from branch_agent.instance import StartRefused
from branch_agent.settings import AgentSettings
from protocol.tls_files import ca_problem, certificate_problem

__all__ = ["check_before_start", "creds_problem"]

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


def check_before_start(settings: AgentSettings) -> None:
    """Refuse to start on what cannot work: unusable credentials or TLS files, a
    database whose events belong to another branch code."""
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
