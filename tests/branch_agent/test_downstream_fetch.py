"""The reader's two-step fetch keeps the message in hand when the second pull times out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from branch_agent.downstream import DownMessage, DownstreamReader


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


class _Msg:
    def __init__(self, subject: str, seq: int) -> None:
        self.subject = subject
        self.data = b""
        self.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=seq), num_delivered=1)
        self.outcome = ""

    async def ack(self) -> None:
        self.outcome = "ack"

    async def nak(self) -> None:
        self.outcome = "nak"


class _Js:
    """One fetch of ``msgs``, then nothing; consumer info as given."""

    def __init__(self, msgs: list[_Msg], stop: asyncio.Event, info: Any = None) -> None:
        self.msgs = msgs
        self.stop = stop
        self.info = info or SimpleNamespace(num_ack_pending=0)

    async def consumer_info(self, stream: str, consumer: str) -> Any:
        return self.info

    async def pull_subscribe_bind(self, durable: str, stream: str) -> Any:
        js = self

        class Sub:
            async def fetch(self, batch: int, timeout: float) -> list[Any]:
                if js.msgs:
                    taken, js.msgs = js.msgs, []
                    return taken
                js.stop.set()
                raise NatsTimeoutError

            async def unsubscribe(self) -> None:
                return None

        return Sub()


async def test_a_failed_run_and_the_rest_of_its_fetch_come_back_first() -> None:
    """Not acked, a failed message would come back only after ack_wait, after later
    messages: naked, it is handed out again ahead of them (stream order)."""
    stop = asyncio.Event()
    msgs = [
        _Msg("down.all.command.c1", 1),
        _Msg("down.all.price.b001", 2),
        _Msg("down.all.price.b002", 3),
        _Msg("down.all.command.c2", 4),
    ]
    applied: list[str] = []

    async def command(message: DownMessage) -> None:
        applied.append(message.subject)

    async def prices(messages: list[DownMessage]) -> None:
        raise RuntimeError("disk full")

    reader = DownstreamReader("B01", batch=32)
    reader.register("command", command)
    reader.register_batch(("price",), prices)
    await reader.run(_Js(msgs, stop), stop)  # type: ignore[arg-type]
    assert applied == ["down.all.command.c1"]
    assert [m.outcome for m in msgs] == ["ack", "nak", "nak", "nak"]
    assert reader.state.failures == 1


async def test_first_fetch_waits_for_messages_a_killed_process_left_unacked() -> None:
    stop = asyncio.Event()
    info = SimpleNamespace(
        num_ack_pending=3,
        config=SimpleNamespace(ack_wait=30.0),
        delivered=SimpleNamespace(last_active=datetime.now(UTC) - timedelta(seconds=29.7)),
    )
    reader = DownstreamReader("B01")
    waited = await reader.wait_for_unacked(_Js([], stop, info), stop)  # type: ignore[arg-type]
    # Until 30 s after the last delivery, plus a margin for the server's timer.
    assert 0.5 < waited < 1.0
    none_pending = SimpleNamespace(num_ack_pending=0)
    assert await reader.wait_for_unacked(_Js([], stop, none_pending), stop) == 0.0  # type: ignore[arg-type]
