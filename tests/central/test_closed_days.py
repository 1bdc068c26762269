"""Closing a day is permanent: a day that has not begun at the branch is refused, and
the day records who closed it (the request's user unless the body names someone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from central.app import create_app
from central.models import AuditEntry, ClosedDay
from tests.conftest import asgi_client, create_api_token, register_branch


async def test_a_future_day_is_refused_and_closed_by_defaults_to_the_user(
    central: Any,
) -> None:
    # Kiritimati is UTC+14: its local day is often already tomorrow in UTC.
    await register_branch(central, "B1", timezone="Pacific/Kiritimati")
    token = await create_api_token(central, "admin", name="mia")
    async with asgi_client(
        create_app(central.settings, runtime=central), headers={"Authorization": f"Bearer {token}"}
    ) as client:
        today = datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
        for future in (today + timedelta(days=1), datetime(2027, 1, 1, tzinfo=UTC).date()):
            if future <= today:
                continue
            r = await client.post(
                "/api/v1/shifts/closed-days",
                json={"branch": "B1", "local_date": future.isoformat()},
            )
            assert r.status_code == 422, r.text
            assert [e["field"] for e in r.json()["errors"]] == ["local_date"]
        async with central.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(ClosedDay)) == 0
            assert (
                await session.scalar(
                    select(func.count())
                    .select_from(AuditEntry)
                    .where(AuditEntry.action == "shift.close_day")
                )
                == 0
            )

        # The branch's own today (ahead of UTC's) may be closed, by the request's user.
        r = await client.post(
            "/api/v1/shifts/closed-days", json={"branch": "B1", "local_date": today.isoformat()}
        )
        assert r.status_code == 201, r.text
        assert r.json()["closed_by"] == "mia"
        r = await client.post(
            "/api/v1/shifts/closed-days",
            json={
                "branch": "B1",
                "local_date": (today - timedelta(days=1)).isoformat(),
                "closed_by": "ops",
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["closed_by"] == "ops"
        r = await client.get("/api/v1/shifts/closed-days", params={"branch": "B1"})
        assert [d["closed_by"] for d in r.json()["items"]] == ["mia", "ops"]
