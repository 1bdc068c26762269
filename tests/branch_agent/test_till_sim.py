"""The till simulator against a real agent: a token the agent refuses stops it with
the reason, instead of a simulator that posts nothing, for ever, without a word."""

from __future__ import annotations

import asyncio
import logging

import pytest

from branch_agent.till_sim import SimItem, TillRefused, TillSimulator
from tests.branch_agent.conftest import Store


async def test_a_wrong_token_stops_the_simulator_naming_it(store: Store) -> None:
    till = TillSimulator("http://testserver", "not-a-till-token", seed=1)
    with pytest.raises(TillRefused, match="401 unknown token"):
        await till.open_shift(store.client)
    # The manager's token is a valid one, but not a till's: 403.
    till = TillSimulator("http://testserver", "manager-secret", seed=1)
    with pytest.raises(TillRefused, match="403"):
        await till.post_sale(store.client)
    assert await store.events("sale_completed") == []


async def test_a_catalog_without_the_demo_products_is_said_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    till = TillSimulator(
        "http://testserver", "till-1-secret", seed=1, items=(SimItem("4000000000006"),)
    )
    await till.open_shift(store.client)
    with caplog.at_level(logging.WARNING, logger="branch_agent.till_sim"):
        for _ in range(3):
            assert await till.post_sale(store.client) is None
            await asyncio.sleep(0)
    said = [r for r in caplog.records if "none of the scanned products" in r.getMessage()]
    assert len(said) == 1


async def test_the_till_token_sells(store: Store) -> None:
    till = TillSimulator("http://testserver", "till-1-secret", seed=1)
    await till.open_shift(store.client)
    assert await till.post_sale(store.client) is not None
