"""Rotating a branch's NATS credentials (the earlier ones retired on a real nats-server
without a restart) and reinstating a revoked branch (new credentials, its refused
events replayed: nothing lost, nothing doubled)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import func, select

from central.embedded_nats import EmbeddedNats
from central.models import AuditEntry, Branch, DeadLetter, Receipt
from central.runtime import CentralRuntime
from central.sync.nats_auth import NatsIssuer
from protocol.subjects import up_subject
from tests.conftest import admin_client, wait_until
from tests.e2e.test_nats_permissions import (
    Client,
    add_branch_with_creds,
    issuer,
    receipt,
    secure_central,
    secure_nats,
)

__all__ = ["issuer", "secure_central", "secure_nats"]  # fixtures used here


@pytest.fixture
async def admin(secure_central: CentralRuntime) -> AsyncIterator[Any]:
    async with admin_client(secure_central) as client:
        yield client


def creds_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.creds"
    path.write_text(text)
    return path


def copy_of(tmp_path: Path, name: str, path: str) -> Path:
    return creds_file(tmp_path, name, Path(path).read_text())


async def refused(url: str, creds: Path, branch: str) -> None:
    client = Client()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await client.connect(url, creds, branch)
    await client.close()


async def publishes(url: str, creds: Path, branch: str, seq: int) -> None:
    client = await Client().connect(url, creds, branch)
    try:
        ack = await client.nc.jetstream().publish(
            up_subject(branch, "receipt_recorded"), receipt(branch, seq), timeout=5
        )
        assert ack.seq >= 1
    finally:
        await client.close()


async def test_rotation_retires_the_earlier_credentials_on_nats(
    secure_central: CentralRuntime,
    secure_nats: EmbeddedNats,
    issuer: NatsIssuer,
    admin: Any,
    tmp_path: Path,
) -> None:
    first = await add_branch_with_creds(secure_central, issuer, "BA")
    # Without retire_previous both stay valid (a second till PC, a planned switch).
    kept = await admin.post("/api/v1/branches/BA/credentials")
    assert kept.status_code == 201, kept.text
    assert (kept.json()["retired"], kept.json()["pushed_to_nats"]) == ([], None)
    second = creds_file(tmp_path, "second", kept.json()["creds"])
    await publishes(secure_nats.url, first, "BA", 1)
    live = await Client().connect(secure_nats.url, first, "BA")
    try:
        rotated = await admin.post("/api/v1/branches/BA/credentials?retire_previous=true")
        assert rotated.status_code == 201, rotated.text
        body = rotated.json()
        assert body["pushed_to_nats"] is True
        assert len(body["retired"]) == 2
        third = creds_file(tmp_path, "third", body["creds"])
        # The connection on the leaked file is cut; neither earlier file connects again.
        await wait_until(lambda: _closed(live), timeout=10)
    finally:
        await live.close()
    await refused(secure_nats.url, first, "BA")
    await refused(secure_nats.url, second, "BA")
    await publishes(secure_nats.url, third, "BA", 2)

    listed = await admin.get("/api/v1/branches/BA/credentials")
    assert listed.status_code == 200, listed.text
    rows = listed.json()
    assert [r["public_key"] for r in rows[:2]] == body["retired"]
    assert [r["retired_at"] is not None for r in rows] == [True, True, False]
    assert rows[2]["public_key"] == body["nats_user"]
    # The branch itself runs on: both receipts reach central, once.
    await wait_until(lambda: _receipts(secure_central, 2))
    async with secure_central.sessionmaker() as session:
        branch = await session.get(Branch, "BA")
        audited = (
            await session.scalars(
                select(AuditEntry.after).where(AuditEntry.action == "branch.credentials")
            )
        ).all()
    assert branch is not None
    assert branch.active
    assert any((a or {}).get("retired") == body["retired"] for a in audited)

    missing = await admin.get("/api/v1/branches/NOPE/credentials")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    bad = await admin.post("/api/v1/branches/BA/credentials?retire_previous=maybe")
    assert bad.status_code == 422
    assert "retire_previous" in bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    listed_again = await admin.get("/api/v1/branches/BA/credentials")
    assert len(listed_again.json()) == 3  # the bad request issued nothing


async def test_reinstating_a_revoked_branch_loses_and_doubles_nothing(
    secure_central: CentralRuntime,
    secure_nats: EmbeddedNats,
    issuer: NatsIssuer,
    admin: Any,
    tmp_path: Path,
) -> None:
    for worker in secure_central.workers:
        worker.branch_cache_s = 0.0  # the revocation takes effect at central at once
    creds = await add_branch_with_creds(secure_central, issuer, "BA")
    await publishes(secure_nats.url, creds, "BA", 1)
    await wait_until(lambda: _receipts(secure_central, 1))
    revoked = await admin.post("/api/v1/branches/BA/revoke")
    assert revoked.status_code == 200, revoked.text
    await refused(secure_nats.url, creds, "BA")
    # Its sales already in the stream (published just before the revocation reached
    # NATS) are refused by central: dead letters.
    assert secure_central.js is not None
    for seq in (2, 3):
        await secure_central.js.publish(up_subject("BA", "receipt_recorded"), receipt("BA", seq))

    async def dead_lettered() -> bool:
        async with secure_central.sessionmaker() as session:
            n = await session.scalar(
                select(func.count()).where(DeadLetter.branch == "BA", DeadLetter.status == "open")
            )
        return n == 2

    await wait_until(dead_lettered)
    # Revoked is not final any more, but still refused for what needs an active branch.
    conflict = await admin.post("/api/v1/branches/BA/credentials")
    assert conflict.status_code == 409
    assert "reinstate" in conflict.json()["detail"]

    back = await admin.post("/api/v1/branches/BA/reinstate")
    assert back.status_code == 201, back.text
    body = back.json()
    assert (body["replayed"], body["still_open"]) == (2, 0)
    new_creds = creds_file(tmp_path, "new", body["creds"])
    await refused(secure_nats.url, creds, "BA")  # the revoked file stays useless
    await publishes(secure_nats.url, new_creds, "BA", 4)
    await wait_until(lambda: _receipts(secure_central, 4))
    async with secure_central.sessionmaker() as session:
        branch = await session.get(Branch, "BA")
        open_letters = await session.scalar(select(func.count()).where(DeadLetter.status == "open"))
        receipts = (await session.scalars(select(Receipt.receipt_number))).all()
        audited = await session.scalar(
            select(func.count()).where(AuditEntry.action == "branch.reinstate")
        )
    assert branch is not None
    assert (branch.active, branch.revoked_at, open_letters, audited) == (True, None, 0, 1)
    assert sorted(receipts) == [1, 2, 3, 4]

    again = await admin.post("/api/v1/branches/BA/reinstate")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert (await admin.post("/api/v1/branches/NOPE/reinstate")).status_code == 404


async def test_a_rotation_is_not_taken_for_a_revocation_after_a_database_restore(
    db_url: str, secure_nats: EmbeddedNats, issuer: NatsIssuer, tmp_path: Path
) -> None:
    """Central's database restored from before a rotation still lists the retired key
    as valid: at start central marks it retired, and the branch stays active."""
    from central.services.nats_auth import issue_branch_credentials, settle_issued
    from tests.conftest import running_central
    from tests.e2e.test_central_restored import backup_of
    from tests.e2e.test_nats_permissions import secure_settings

    settings = secure_settings(db_url, secure_nats, issuer)
    async with running_central(settings) as central:
        await add_branch_with_creds(central, issuer, "BA")
    restore = await backup_of(db_url, tmp_path)
    async with running_central(settings) as central:
        async with central.sessionmaker() as session, session.begin():
            issued = await issue_branch_credentials(session, issuer, "BA", retire_previous=True)
        assert await settle_issued(issuer, issued, secure_nats.url)
    await restore()
    async with running_central(settings) as central:
        async with central.sessionmaker() as session:
            branch = await session.get(Branch, "BA")
            restored = await session.scalar(
                select(func.count()).where(AuditEntry.action == "branch.revocation_restored")
            )
        assert branch is not None
        assert (branch.active, restored) == (True, 0)
    new = creds_file(tmp_path, "new", issued.user.creds)
    await publishes(secure_nats.url, new, "BA", 1)


async def test_cli_rotates_lists_and_reinstates(
    db_url: str, secure_nats: EmbeddedNats, issuer: NatsIssuer, tmp_path: Path
) -> None:
    """(No central runs here, so no stream: a file connecting is the check.)"""
    import asyncio
    import os
    import sys

    env = {
        **os.environ,
        "BACKROOM_DATABASE_URL": db_url,
        "BACKROOM_DATA_DIR": str(tmp_path / "central"),
        "BACKROOM_NATS_URL": secure_nats.url,
        "BACKROOM_NATS_ISSUER_DIR": str(issuer.directory),
        "BACKROOM_CENTRAL_CONFIG": "",
    }

    async def cli(*args: str) -> tuple[int, dict[str, Any]]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "central",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        return process.returncode or 0, json.loads(out.decode().strip().splitlines()[-1])

    code, added = await cli("branches", "add", "BC")
    assert code == 0, added
    # The CLI writes each branch's file in one place: copies keep the earlier ones.
    first_file = copy_of(tmp_path, "first", added["creds_file"])
    code, rotated = await cli("branches", "credentials", "BC", "--retire-previous")
    assert code == 0, rotated
    assert (len(rotated["retired"]), rotated["pushed_to_nats"]) == (1, True)
    await refused(secure_nats.url, first_file, "BC")
    second_file = copy_of(tmp_path, "second", rotated["creds_file"])
    await (await Client().connect(secure_nats.url, second_file, "BC")).close()
    code, listed = await cli("branches", "credentials", "BC", "--list")
    assert code == 0, listed
    assert [c["retired_at"] is not None for c in listed["credentials"]] == [True, False]

    code, _ = await cli("branches", "revoke", "BC")
    assert code == 0
    code, wrong = await cli("branches", "reinstate", "BX")
    assert (code, wrong["field"]) == (1, "code")
    code, back = await cli("branches", "reinstate", "BC")
    assert code == 0, back
    assert back["reinstated"] is True
    await refused(secure_nats.url, second_file, "BC")
    third_file = copy_of(tmp_path, "third", back["creds_file"])
    await (await Client().connect(secure_nats.url, third_file, "BC")).close()


def _closed(client: Client) -> Any:
    async def check() -> bool:
        return client.closed.is_set()

    return check()


def _receipts(runtime: CentralRuntime, n: int) -> Any:
    async def check() -> bool:
        async with runtime.sessionmaker() as session:
            got = await session.scalar(select(func.count(Receipt.id)))
        return got == n

    return check()
