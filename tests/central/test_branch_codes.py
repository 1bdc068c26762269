"""Branch codes are case-sensitive (NATS subject tokens, the agents' settings) and kept
as given; a new code that differs from a registered one only by letter case is the
same store typed twice and is refused, by the API and the command line alike.
``branches list`` shows what is registered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from central.models import Branch
from tests.conftest import run_bare, table_row_counts


async def test_the_api_refuses_a_code_differing_only_by_case(
    central: Any, central_client: Any
) -> None:
    r = await central_client.post("/api/v1/branches", json={"code": "B005", "name": "Harbour"})
    assert r.status_code == 201, r.text
    before = await table_row_counts(central)
    for twin in ("b005", "B005"):
        r = await central_client.post("/api/v1/branches", json={"code": twin})
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["errors"][0]["field"] == "code"
        assert "'B005' already exists" in problem["detail"]
    # Before: b005 was a second branch (its own credentials, consumer and records).
    assert await table_row_counts(central) == before
    listed = (await central_client.get("/api/v1/branches")).json()["items"]
    assert [b["code"] for b in listed] == ["B005"]
    # Codes are not normalised: another code entirely is fine, in any case.
    r = await central_client.post("/api/v1/branches", json={"code": "b006"})
    assert r.status_code == 201, r.text
    async with central.sessionmaker() as session:
        assert await session.get(Branch, "b006") is not None


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = run_bare(
        "central",
        tmp_path,
        *args,
        BACKROOM_DATABASE_URL=db_url,
        BACKROOM_DATA_DIR=str(tmp_path / "central"),
        BACKROOM_NATS_URL="nats://127.0.0.1:1",
    )
    return result


def test_branches_list_and_add_on_the_command_line(db_url: str, tmp_path: Path) -> None:
    empty = _cli(db_url, tmp_path, "branches", "list")
    assert (empty.returncode, empty.stdout) == (0, ""), empty.stderr
    for code, zone in (("B005", "Europe/Berlin"), ("A001", "UTC")):
        added = _cli(db_url, tmp_path, "branches", "add", code, "--timezone", zone)
        assert added.returncode == 0, added.stderr
    twin = _cli(db_url, tmp_path, "branches", "add", "b005")
    assert twin.returncode == 1, twin.stderr
    refused = json.loads(twin.stdout)
    assert refused["field"] == "code"
    assert "'B005' already exists" in refused["error"]
    assert not (tmp_path / "central" / "nats-issuer" / "branches" / "b005.creds").exists()
    listed = _cli(db_url, tmp_path, "branches", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["branch"], r["timezone"], r["active"]) for r in rows] == [
        ("A001", "UTC", True),
        ("B005", "Europe/Berlin", True),
    ]
    assert set(rows[0]) == {
        "branch",
        "name",
        "timezone",
        "format",
        "zone",
        "active",
        "created_at",
        "revoked_at",
    }
