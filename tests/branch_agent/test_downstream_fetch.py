"""The reader's two-step fetch keeps the message in hand when the second pull times out."""

from __future__ import annotations

from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from branch_agent.downstream import DownstreamReader


class _Sub:
    """A pull subscription: the first fetch yields one message, the second raises."""

    def __init__(self, second: BaseException | None) -> None:
        self.second = second
        self.calls: list[int] = []

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        self.calls.append(batch)
        if len(self.calls) == 1:
            return ["first"]
        if self.second is not None:
            raise self.second
        return ["second"]


@pytest.mark.parametrize(
    # nats-py raises the builtin TimeoutError when its deadline passed before the second
    # pull request; NatsTimeoutError when the pull found nothing.
    "second",
    [TimeoutError(), NatsTimeoutError()],
)
async def test_message_in_hand_survives_a_timeout_of_the_second_pull(
    second: BaseException,
) -> None:
    reader = DownstreamReader("B01", batch=32)
    sub = _Sub(second)
    assert await reader._fetch(sub) == ["first"]
    assert sub.calls == [1, 31]


async def test_second_pull_adds_what_is_there() -> None:
    reader = DownstreamReader("B01", batch=32)
    assert await reader._fetch(_Sub(None)) == ["first", "second"]


async def test_other_errors_of_the_second_pull_propagate() -> None:
    reader = DownstreamReader("B01", batch=32)
    with pytest.raises(ConnectionError):
        await reader._fetch(_Sub(ConnectionError("link down")))
