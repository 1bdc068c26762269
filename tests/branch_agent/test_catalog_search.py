"""The till's product search matches the typed text literally: % and _ are not wildcards."""

from __future__ import annotations

from datetime import UTC, datetime

from branch_agent.catalog import search_products
from tests.branch_agent.conftest import Store


async def test_like_wildcards_in_the_text_match_themselves(store: Store) -> None:
    async with store.agent.sessionmaker() as session:
        at = datetime.now(UTC)
        assert await search_products(session, "milk", at=at)
        assert await search_products(session, "%", at=at) == []
        assert await search_products(session, "_", at=at) == []
        assert await search_products(session, "\\", at=at) == []
