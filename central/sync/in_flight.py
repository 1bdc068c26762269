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
acknowledged lies above its acknowledged floor; the branch's messages from there on are
read one by one (JetStream's next-message-by-subject lookup, ``up.<branch>.>``) and
give: the highest event number among them and the highest number a heartbeat among
them says the branch had recorded, and the sales and returns among them. A message
acknowledged meanwhile has been stored first (ingestion acks after its commit), so
reading the stream before the database misses nothing. The read is bounded (a
branch's backlog too long to read during one request): then the answer says so and the
branch asks again, while ingestion shortens the backlog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from protocol.codec import WireDecodeError, decode_envelope, decode_envelope_seq, decode_heartbeat
from protocol.events import CustomerReturnRecorded, ReceiptRecorded
from protocol.masterdata import HeldReturn, HeldSale
from protocol.subjects import HEARTBEAT_KIND, INGEST_DURABLE, UP_STREAM, parse_up_subject

__all__ = ["IN_FLIGHT_BUDGET_S", "IN_FLIGHT_MAX_MESSAGES", "InFlight", "read_in_flight"]

# About 3,500 lookups a second on a loopback link: within the branch's 10 s request
# timeout with room for the database's part.
IN_FLIGHT_MAX_MESSAGES = 10_000
IN_FLIGHT_BUDGET_S = 4.0


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
    deadline = time.monotonic() + budget_s
    try:
        cursor = await _ack_floor(js) + 1
        while True:
            if found.messages >= max_messages or time.monotonic() > deadline:
                found.unread = (
                    f"central's ingest queue holds more of branch {branch}'s messages than "
                    f"it reads at once ({found.messages} read, not stored yet): it lists "
                    "the sales the restore lost once ingestion has shortened it"
                )
                return found
            try:
                msg = await js.get_msg(UP_STREAM, seq=cursor, subject=f"up.{branch}.>", next=True)
            except NotFoundError:
                return found
            found.messages += 1
            if msg.seq is None:
                return found
            cursor = msg.seq + 1
            try:
                _, kind = parse_up_subject(msg.subject or "")
            except ValueError:
                continue
            _take(found, branch, kind, msg.data or b"", after)
    except Exception as exc:
        found.unread = (
            f"central could not read its ingest queue for branch {branch}'s messages not "
            f"stored yet ({type(exc).__name__}: {exc})"
        )
        return found
