"""The ingest worker's fetch fills its batch from a backlog in as many pulls as it takes."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from central.ingest.worker import IngestWorker


class _Sub:
    """A pull subscription answering each fetch from a script: a list of messages or an
    exception to raise; past the script, every pull times out."""

    def __init__(self, *script: list[str] | BaseException) -> None:
        self.script = list(script)
        self.calls: list[int] = []

    async def fetch(self, batch: int, timeout: float) -> list[str]:
        self.calls.append(batch)
        if not self.script:
            raise NatsTimeoutError()
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        # nats-py also hands over what arrived late for earlier pulls: may exceed batch.
        return step


def _worker(batch_size: int) -> IngestWorker:
    return IngestWorker(cast(Any, None), batch_size=batch_size)


async def test_a_backlog_arriving_over_several_pulls_makes_one_full_batch() -> None:
    # nats-py returns what arrived within a pull's 20 ms; the rest comes on the next.
    sub = _Sub(["m1"], ["m2", "m3"], ["m4"], ["m5", "m6"])
    assert await _worker(6)._fetch(sub) == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert sub.calls == [1, 5, 3, 2]


async def test_the_batch_ends_when_a_pull_finds_nothing() -> None:
    sub = _Sub(["m1"], ["m2"], NatsTimeoutError(), ["never taken"])
    assert await _worker(10)._fetch(sub) == ["m1", "m2"]
    assert sub.calls == [1, 9, 8]


async def test_what_a_pull_hands_over_beyond_the_batch_starts_the_next_one() -> None:
    sub = _Sub(["m1"], ["m2", "m3", "m4", "m5"], ["m6"])
    worker = _worker(3)
    assert await worker._fetch(sub) == ["m1", "m2", "m3"]
    # The excess first, without waiting for a new first message; then it fills up.
    assert await worker._fetch(sub) == ["m4", "m5", "m6"]
    assert sub.calls == [1, 2, 1]
    # Nothing left over: the next batch waits for a new first message.
    with pytest.raises(NatsTimeoutError):
        await worker._fetch(sub)
    assert sub.calls == [1, 2, 1, 1]


@pytest.mark.parametrize("quiet", [[], TimeoutError()])
async def test_a_quiet_stream_gives_the_message_in_hand(quiet: list[str] | BaseException) -> None:
    sub = _Sub(["m1"], quiet)
    assert await _worker(10)._fetch(sub) == ["m1"]


async def test_a_batch_of_one_pulls_once() -> None:
    sub = _Sub(["m1"], ["m2"])
    assert await _worker(1)._fetch(sub) == ["m1"]
    assert sub.calls == [1]


async def test_other_errors_of_a_later_pull_propagate() -> None:
    sub = _Sub(["m1"], ConnectionError("link down"))
    with pytest.raises(ConnectionError):
        await _worker(10)._fetch(sub)
