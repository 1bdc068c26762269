"""What a branch sent that central's ingestion has not stored yet, read from the up
stream itself.

An agent database restored from a backup asks central where its numbering goes on and
which sales and returns it lost (``central.services.held_records``). Central's database
is not the whole answer: what the old database published to JetStream just before it
was replaced may still be in the stream, not ingested (an ingest worker that died or
is stopped, a backlog). Those numbers are the branch's already and those sales were
printed: numbered again or not listed, the till's retry of one would be recorded and
printed a second time.

So central reads them where they are. Every message the shared ingest consumer has not
acknowledged lies above its acknowledged floor; the branch's messages from there on, up
to the end of the stream as it was when the read began, are read in bulk through a
short-lived pull consumer of its own (ephemeral, filtered on ``up.<branch>.>``, no
acks, batches of 5,000; deleted afterwards whatever happened, and by the server itself
after 10 s idle if central dies mid-read) and give: the highest event number among them and the highest number a heartbeat among
them says the branch had recorded, and the sales and returns among them. A message
acknowledged meanwhile has been stored first (ingestion acks after its commit), so
reading the stream before the database misses nothing. The read is bounded (a
branch's backlog too long to read during one request): then the answer says so and the
branch asks again, while ingestion shortens the backlog.

Measured (``python -m bench.in_flight``, 2-core machine shared with other work, 100,000
receipts of one branch interleaved with as many of three others): 22,000-24,000
messages/s decoded, 100,000 in 4.1-4.5 s; the former one-lookup-a-message read did
2,300-2,600/s (10,000 in 4 s), and a plain ordered consumer of the whole stream counts
44,000-52,000/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from protocol.codec import WireDecodeError, decode_envelope, decode_envelope_seq, decode_heartbeat
from protocol.events import CustomerReturnRecorded, ReceiptRecorded
from protocol.masterdata import HeldReturn, HeldSale
from protocol.subjects import HEARTBEAT_KIND, INGEST_DURABLE, UP_STREAM, parse_up_subject

__all__ = ["IN_FLIGHT_BUDGET_S", "IN_FLIGHT_MAX_MESSAGES", "InFlight", "read_in_flight"]

# 22,000-24,000 messages a second (see above): 100,000 within 6 s, leaving 4 s of the
# branch's 10 s request timeout to the database's part. The count bounds the memory.
IN_FLIGHT_MAX_MESSAGES = 150_000
IN_FLIGHT_BUDGET_S = 6.0
# Messages asked for at once from the read's consumer.
IN_FLIGHT_BATCH = 5_000
# A read's consumer left behind (central killed mid-read) goes after this idle time.
IN_FLIGHT_CONSUMER_IDLE_S = 10.0
# Tokens of a delivery's reply subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream
# seq>.<consumer seq>.<time>.<pending>, or with domain and account hash (v2).
_V1_TOKENS = 9
_V2_TOKENS = 12


@dataclass(slots=True)
class InFlight:
    """The branch's messages above the ingest consumer's acknowledged floor."""

    # Why they could not all be read ("": read to the end of the stream).
    unread: str = ""
    # The highest event number among them, or recorded per a heartbeat among them.
    high: int = 0
    # The event numbers among them above the ``after`` asked for.
    seqs: set[int] = field(default_factory=set)
    sales: list[HeldSale] = field(default_factory=list)
    returns: list[HeldReturn] = field(default_factory=list)
    messages: int = 0


async def _ack_floor(js: JetStreamContext) -> int:
    try:
        info = await js.consumer_info(UP_STREAM, INGEST_DURABLE)
    except NotFoundError:
        # Gone (created again with DeliverPolicy.ALL): everything is to be read.
        return 0
    return (info.ack_floor.stream_seq if info.ack_floor else 0) or 0


def _take(found: InFlight, branch: str, kind: str, data: bytes, after: int) -> None:
    """One message of the branch: its numbers, and the record it carries."""
    if kind == HEARTBEAT_KIND:
        try:
            beat = decode_heartbeat(data)
        except WireDecodeError:
            return
        if beat.branch == branch:
            found.high = max(found.high, beat.last_recorded_seq)
        return
    place = decode_envelope_seq(data)
    if place is None or place[0] != branch:
        return  # central dead-letters it: it names no number of this branch
    seq = place[1]
    found.high = max(found.high, seq)
    if seq <= after:
        return
    found.seqs.add(seq)
    try:
        envelope = decode_envelope(data)
    except WireDecodeError:
        return  # a dead letter to be: nothing a till can retry from it
    body = envelope.body
    if isinstance(body, ReceiptRecorded):
        found.sales.append(
            HeldSale(
                seq=seq,
                till=body.till,
                sale_id=body.sale_id,
                receipt_number=body.receipt_number,
                shift_id=body.shift_id,
                total=body.total,
                fiscal_number=body.fiscal_number,
            )
        )
    elif isinstance(body, CustomerReturnRecorded):
        found.returns.append(
            HeldReturn(
                seq=seq,
                till=body.till,
                return_id=body.return_id,
                return_number=body.return_number,
                shift_id=body.shift_id,
                total=body.total,
                fiscal_number=body.fiscal_number,
            )
        )


def _position(reply: str) -> tuple[int, int]:
    """The stream sequence of a delivered message and how many of the consumer's
    messages follow it, from its reply subject (nats-py's ``Msg.metadata`` parses a
    timestamp too: a third of the read's time)."""
    tokens = reply.split(".")
    if len(tokens) == _V1_TOKENS:
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= _V2_TOKENS - 1 and tokens[0] == "$JS":
        return int(tokens[Msg.Ack.StreamSeq]), int(tokens[Msg.Ack.NumPending])
    raise ValueError(f"not a JetStream delivery: {reply!r}")


class _Read:
    """One read through a short-lived pull consumer: its deliveries are taken in the
    subscription's callback, the next batch asked for when the last arrived."""

    def __init__(
        self, nc: Client, found: InFlight, branch: str, after: int, end: int, limit: int
    ) -> None:
        self.nc = nc
        self.found = found
        self.branch = branch
        self.after = after
        self.end = end
        self.limit = limit
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.inbox = nc.new_inbox()
        self.next_subject = ""
        self.in_batch = 0

    async def ask(self) -> None:
        self.in_batch = 0
        # no_wait: the server sends what it has, then a 404/408 status if fewer.
        request = {"batch": IN_FLIGHT_BATCH, "no_wait": True}
        await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)

    def finish(self, complete: bool) -> None:
        if not self.done.done():
            self.done.set_result(complete)

    async def delivered(self, msg: Msg) -> None:
        if self.done.done():
            return
        try:
            if not msg.reply:
                # A status: 404 No Messages / 408 under no_wait is the end of what the
                # consumer holds; any other (409 consumer deleted, ...) is an error.
                status = (msg.headers or {}).get("Status", "")
                if status in ("404", "408"):
                    self.finish(True)
                else:
                    description = (msg.headers or {}).get("Description", "")
                    raise RuntimeError(f"JetStream status {status} {description}".strip())
                return
            seq, pending = _position(msg.reply)
            if seq > self.end:
                self.finish(True)  # sent after the read began
                return
            self.found.messages += 1
            try:
                _, kind = parse_up_subject(msg.subject)
            except ValueError:
                kind = ""
            if kind:
                _take(self.found, self.branch, kind, msg.data, self.after)
            if pending == 0 or seq == self.end:
                self.finish(True)
            elif self.found.messages >= self.limit:
                self.finish(False)
            else:
                self.in_batch += 1
                if self.in_batch == IN_FLIGHT_BATCH:
                    await self.ask()
        except Exception as exc:
            if not self.done.done():
                self.done.set_exception(exc)


async def read_in_flight(
    js: JetStreamContext,
    branch: str,
    *,
    after: int = 0,
    max_messages: int = IN_FLIGHT_MAX_MESSAGES,
    budget_s: float = IN_FLIGHT_BUDGET_S,
) -> InFlight:
    """The branch's messages the ingest consumer has not acknowledged (see the module);
    the sales and returns among them numbered above ``after``. Never raises for
    JetStream: what could not be read is ``unread``."""
    found = InFlight()
    # The connection under the context: its deliveries go to a plain subscription
    # (nats-py's fetch waits with a timer per message, a third of the rate).
    nc: Client = js._nc
    name = f"in-flight-{branch}-{secrets.token_hex(6)}"
    created = False
    sub = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    try:
        # Not cut by the budget: a consumer created after a request given up could not
        # be deleted (its creation unknown); JetStream's own request timeouts bound it.
        floor = await _ack_floor(js)
        # Up to the end of the stream as it was when the read began: a branch sending
        # on would otherwise keep it reading.
        end = (await js.stream_info(UP_STREAM)).state.last_seq or 0
        if end <= floor:
            return found
        read = _Read(nc, found, branch, after, end, max_messages)
        sub = await nc.subscribe(
            read.inbox,
            cb=read.delivered,
            pending_msgs_limit=4 * IN_FLIGHT_BATCH,
            pending_bytes_limit=256 * 1024 * 1024,
        )
        # Deleted afterwards even if the answer to its creation never comes.
        created = True
        info = await js.add_consumer(
            UP_STREAM,
            ConsumerConfig(
                name=name,
                filter_subject=f"up.{branch}.>",
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=floor + 1,
                ack_policy=AckPolicy.NONE,
                # The server deletes it after that if central dies mid-read.
                inactive_threshold=IN_FLIGHT_CONSUMER_IDLE_S,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        if not info.num_pending:
            return found
        # The context's API prefix ($JS.API, or a domain's).
        read.next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{UP_STREAM}.{name}"
        await read.ask()
        try:
            complete = await asyncio.wait_for(read.done, max(0.0, deadline - loop.time()))
        except TimeoutError:
            complete = False  # out of time
        if not complete:
            found.unread = _too_many(branch, found)
    except Exception as exc:
        found.unread = (
            f"central could not read its ingest queue for branch {branch}'s messages not "
            f"stored yet ({type(exc).__name__}: {exc})"
        )
    finally:
        await _remove(js, sub, name if created else "")
    return found


def _too_many(branch: str, found: InFlight) -> str:
    return (
        f"central's ingest queue holds more of branch {branch}'s messages than "
        f"it reads at once ({found.messages} read, not stored yet): it lists "
        "the sales the restore lost once ingestion has shortened it"
    )


async def _remove(js: JetStreamContext, sub: Subscription | None, consumer: str) -> None:
    """Unsubscribe and delete the read's consumer, whatever happened; if the server
    cannot be told now, it deletes the consumer itself once idle."""
    with contextlib.suppress(Exception):
        if sub is not None:
            await sub.unsubscribe()
    if consumer:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(js.delete_consumer(UP_STREAM, consumer), 2.0)
