"""How the agent names a shift: the till's next number, past central's numbering answer
when the database went back in time or is new, tagged when opened before the answer."""

from __future__ import annotations

import re

from tests.branch_agent.conftest import TILL2, Store


async def _open_and_close(store: Store) -> str:
    shift_id = str((await store.open_shift(TILL2))["shift_id"])
    closed = await store.client.post("/api/v1/shifts/current/close", headers=TILL2)
    assert closed.status_code == 200, closed.text
    return shift_id


async def test_shift_numbers_go_on_past_centrals_answer_and_are_tagged_before_it(
    store: Store,
) -> None:
    numbering = store.agent.numbering
    # A new database, offline: central has not said where its numbers start.
    assert not numbering.settled
    first = await _open_and_close(store)
    assert re.fullmatch(r"T2-1-[2-9a-z]{5}", first), first
    # Central answers: the branch had nothing, numbers from 1.
    await numbering.settle(1)
    assert await _open_and_close(store) == "T2-2"
    # A restart central answers right after the database's own numbers: consecutive.
    await numbering.load()
    await numbering.settle(numbering.checked + 1)
    assert await _open_and_close(store) == "T2-3"
    # A restart after which central holds 100 more of the branch's events (the
    # database was restored from a backup): past them, whatever the till's count.
    await numbering.load()
    start = numbering.checked + 101
    await numbering.settle(start)
    assert await _open_and_close(store) == f"T2-{start}"
    assert await _open_and_close(store) == f"T2-{start + 1}"
