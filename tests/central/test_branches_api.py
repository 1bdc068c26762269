"""Branch administration through the web API: registration and changes check their
scopes; a change of scope queues a master-data snapshot of the branch."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import SessionTransaction

from central.models import Branch, MasterDataOutbox, PriceZone
from protocol.masterdata import KIND_SNAPSHOT


def _problem_field(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    field: str = errors[0]["field"]
    return field


async def _scopes(client: Any) -> None:
    r = await client.post("/api/v1/formats", json={"code": "mini", "name": "Minimarket"})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/zones", json={"code": "north", "name": "North"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "B1", "price_zone": "NOPE"}, "price_zone"),
        ({"code": "B1", "format_code": "NOPEFMT"}, "format_code"),
        ({"code": "B1", "format_code": "mini", "price_zone": "NOPE"}, "price_zone"),
        ({"code": "B1", "format_code": "", "price_zone": "north"}, "format_code"),
        # A valid IANA name, but no place: the branch's days an hour off half the year.
        ({"code": "B1", "timezone": "EST"}, "timezone"),
        ({"code": "B1", "timezone": "EST5EDT"}, "timezone"),
    ],
)
async def test_registration_refuses_an_unknown_format_or_price_zone(
    central: Any, central_client: Any, body: dict[str, str], field: str
) -> None:
    await _scopes(central_client)
    r = await central_client.post("/api/v1/branches", json=body)
    assert r.status_code == 422, r.text
    assert _problem_field(r) == field
    async with central.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Branch)) == 0


async def test_registration_with_existing_scopes(central: Any, central_client: Any) -> None:
    await _scopes(central_client)
    r = await central_client.post(
        "/api/v1/branches", json={"code": "B1", "format_code": "mini", "price_zone": "north"}
    )
    assert r.status_code == 201, r.text
    listed = (await central_client.get("/api/v1/branches")).json()["items"]
    assert [(b["format_code"], b["price_zone"]) for b in listed] == [("mini", "north")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price_zone": "NOPE"}, "price_zone"),
        ({"format_code": "NOPEFMT"}, "format_code"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "MST"}, "timezone"),
        ({"name": "Harbour", "format_code": "mini", "price_zone": "NOPE"}, "price_zone"),
    ],
)
async def test_change_is_validated_as_on_registration(
    central: Any, central_client: Any, body: dict[str, str], field: str
) -> None:
    await _scopes(central_client)
    r = await central_client.post("/api/v1/branches", json={"code": "B1", "price_zone": "north"})
    assert r.status_code == 201, r.text
    r = await central_client.patch("/api/v1/branches/B1", json=body)
    assert r.status_code == 422, r.text
    assert _problem_field(r) == field
    async with central.sessionmaker() as s:
        branch = await s.get(Branch, "B1")
        assert branch is not None
        assert (branch.name, branch.timezone, branch.format_code, branch.price_zone) == (
            "B1",
            "UTC",
            None,
            "north",
        )
        assert await s.scalar(select(func.count()).select_from(MasterDataOutbox)) == 0


async def test_change_of_an_unknown_branch_is_404(central_client: Any) -> None:
    r = await central_client.patch("/api/v1/branches/NOPE", json={"name": "x"})
    assert r.status_code == 404, r.text
    assert _problem_field(r) == "code"


async def test_change_is_audited_and_a_new_scope_queues_a_snapshot(
    central: Any, central_client: Any
) -> None:
    await _scopes(central_client)
    r = await central_client.post("/api/v1/branches", json={"code": "B1", "price_zone": "north"})
    assert r.status_code == 201, r.text
    r = await central_client.patch(
        "/api/v1/branches/B1",
        json={"name": "Harbour", "timezone": "Europe/Berlin", "format_code": "mini"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["timezone"], body["format_code"], body["price_zone"]) == (
        "Harbour",
        "Europe/Berlin",
        "mini",
        "north",
    )
    # null clears the zone; absent fields stay.
    r = await central_client.patch("/api/v1/branches/B1", json={"price_zone": None})
    assert r.status_code == 200, r.text
    assert (r.json()["format_code"], r.json()["price_zone"]) == ("mini", None)
    # Only the name: no snapshot.
    r = await central_client.patch("/api/v1/branches/B1", json={"name": "Harbour 2"})
    assert r.status_code == 200, r.text
    async with central.sessionmaker() as s:
        snapshots = (
            await s.scalars(
                select(MasterDataOutbox.scope_id).where(MasterDataOutbox.kind == KIND_SNAPSHOT)
            )
        ).all()
    # One per change of scope (the first may be published before the second is queued).
    assert 1 <= len(snapshots) <= 2
    assert set(snapshots) == {"B1"}
    audit = (await central_client.get("/api/v1/audit", params={"target": "branch:B1"})).json()
    updates = [e for e in audit["items"] if e["action"] == "branch.update"]
    assert len(updates) == 3
    first = updates[-1]
    assert first["method"] == "PATCH"
    assert first["before"]["format_code"] is None
    assert first["after"]["format_code"] == "mini"
    assert first["after"]["snapshot"] is not None
    assert "snapshot" not in updates[0]["after"]


async def test_a_failed_commit_puts_the_branch_consumer_back(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer reads the new scopes before the commit; when the commit fails it
    is put back on the old ones (nothing else would: the keeper of consumers acts on
    changes it sees in the database)."""
    from central.db import create_sessionmaker
    from central.services import branches as service
    from central.services.branches import BranchPatch, change_branch

    async with create_sessionmaker(engine)() as session, session.begin():
        session.add_all(
            [PriceZone(code="NORTH", name="North"), PriceZone(code="SOUTH", name="South")]
        )
        branch = await session.get(Branch, "B1")
        assert branch is not None
        branch.price_zone = "NORTH"
    switched: list[str | None] = []

    async def consumer(js: Any, code: str, *, format_code: Any, price_zone: Any) -> None:
        switched.append(price_zone)

    commit = SessionTransaction.commit

    def refused_commit(self: Any, _to_root: bool = False) -> None:
        if self.nested or self._parent is not None:
            return commit(self, _to_root)  # savepoints inside the unit of work
        raise OSError("database went away")

    monkeypatch.setattr(service, "ensure_branch_consumer", consumer)
    monkeypatch.setattr(SessionTransaction, "commit", refused_commit)
    async with create_sessionmaker(engine)() as session:
        with pytest.raises(OSError, match="went away"):
            await change_branch(session, object(), "B1", BranchPatch(price_zone="SOUTH"))
    monkeypatch.undo()
    assert switched == ["SOUTH", "NORTH"]
    async with create_sessionmaker(engine)() as session:
        branch = await session.get(Branch, "B1")
    assert branch is not None
    assert branch.price_zone == "NORTH"


@pytest.mark.parametrize("zone", ["EST", "HST", "Etc/GMT+5"])
async def test_a_zone_not_named_by_place_is_refused_for_branches_and_price_zones(
    central: Any, central_client: Any, zone: str
) -> None:
    # The same check as the agent's timezone setting (protocol.zones): central compares
    # the two, and plans local prices and days in the branch's zone.
    r = await central_client.post("/api/v1/branches", json={"code": "B1", "timezone": zone})
    assert r.status_code == 422, r.text
    assert _problem_field(r) == "timezone"
    assert "such as America/New_York" in r.text
    r = await central_client.post(
        "/api/v1/zones", json={"code": "east", "name": "East", "timezone": zone}
    )
    assert r.status_code == 422, r.text
    assert _problem_field(r) == "timezone"
    async with central.sessionmaker() as s:
        assert await s.scalar(select(func.count()).select_from(Branch)) == 0
        assert await s.get(PriceZone, "east") is None
    for good in ("UTC", "America/New_York"):
        r = await central_client.post(
            "/api/v1/zones", json={"code": good.replace("/", "-"), "name": "Z", "timezone": good}
        )
        assert r.status_code == 201, r.text
