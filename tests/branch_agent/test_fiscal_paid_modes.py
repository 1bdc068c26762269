"""A payment type the till's fiscal printer is not set up for is refused before anything
is recorded: the printer would refuse it mid-receipt, after an earlier payment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import func, select

from branch_agent.agent import Agent
from branch_agent.models import Sale
from devices.sim import start_simulator_pty
from tests.branch_agent.conftest import Store, store_settings
from tests.branch_agent.test_sales_and_fiscal import basket
from tests.conftest import asgi_client


@pytest.fixture
async def store_without_vouchers(tmp_path: Path) -> AsyncIterator[Store]:
    """T1's printer has PaidModes 0..2 programmed, and the agent is told so."""
    handles = {
        kind: start_simulator_pty(kind)
        for kind in ("fiscal", "printer", "display", "scanner", "scale")
    }
    handles["fiscal"].sim.paid_modes = {0, 1, 2}
    settings = store_settings(tmp_path, handles)
    t1, t2 = settings.tills
    settings = msgspec.structs.replace(
        settings,
        tills=(msgspec.structs.replace(t1, fiscal_paid_modes=frozenset({0, 1, 2})), t2),
    )
    agent = Agent(settings)
    try:
        await agent.start()
        async with asgi_client(agent.app) as client:
            yield Store(agent, client, **handles)
    finally:
        await agent.stop()
        for handle in handles.values():
            handle.stop()


async def test_a_payment_type_the_printer_lacks_is_refused_before_recording(
    store_without_vouchers: Store,
) -> None:
    store = store_without_vouchers
    body = basket("s-voucher") | {
        "payments": [{"type": "cash", "amount": 200}, {"type": "voucher", "amount": 263}]
    }
    response = await store.sale(body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "payments[1].type"
    async with store.agent.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Sale)) == 0
    assert store.fiscal.sim.receipts == []
    assert store.fiscal.sim.open_receipt is None
    # what the printer has still sells
    card = basket("s-card") | {"payments": [{"type": "credit_card", "amount": 463}]}
    assert (await store.sale(card)).json()["status"] == "fiscalized"
