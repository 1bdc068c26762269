"""The applier of master data from central: catalog, prices, promotions, versions.

Registered on the agent's down-stream reader for the master-data kinds. Each
message is applied in one SQLite transaction (under the agent's write lock) and
acked by the reader afterwards, so a crash re-delivers it; applying is
idempotent because a bucket message *replaces* its bucket's rows at its scope,
and a per-subject version guard skips an older message redelivered after a newer
one. A ``VersionMark`` sets the applied version that the heartbeat reports.

Catching up: the durable consumer resumes where it stopped; the down stream keeps
only the latest message per subject, so an agent that was offline for weeks gets
exactly the current value of every key, never the intermediate ones. When the
position is not usable (the database was lost, history aged out of the stream, the
consumer was deleted) the agent gets a full snapshot of its scopes: its
``SnapshotRequester`` (branch_agent/masterdata_snapshot.py) reports the position to
central, which decides and publishes the snapshot in the down stream, in order
with every other change; the applier applies its parts like any message and at its
end drops every key the snapshot did not refresh. While a promised snapshot is
outstanding the applied version stays where it was (the replica is not central's
state yet).

Prices, the bulk of it (a repricing of the whole catalog is ~200,000 entries per
agent): a price bucket is written as a difference against the bucket's previous rows,
which ``md_price_buckets`` keeps as one JSON value per bucket (row ids and values),
so neither an index on the bucket nor a per-row read is needed, and the run's price
buckets are applied in aiosqlite's thread in one call instead of one thread hop per
statement. ``md_prices`` is indexed by SKU only, for the till's lookup.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import aiosqlite
import msgspec
from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from branch_agent.catalog import set_local_timezone
from branch_agent.downstream import DownMessage, DownstreamReader
from branch_agent.masterdata_models import (
    FormerProduct,
    MdBarcode,
    MdBranch,
    MdProduct,
    MdPromotion,
    MdState,
)
from protocol.codec import WireDecodeError
from protocol.masterdata import (
    KIND_PRICE,
    KIND_PRODUCT,
    KIND_PROMOTION,
    KIND_SNAPSHOT,
    KIND_VERSION,
    VERSION_KEY,
    MasterDataMessage,
    PriceBucket,
    ProductBucket,
    PromotionRecord,
    SnapshotMark,
    SnapshotPart,
    VersionMark,
    branch_list_digest,
    bucket_key,
    decode_masterdata,
    encode_masterdata,
)
from protocol.subjects import down_subject, parse_down_subject

if TYPE_CHECKING:
    from nats.aio.client import Client

    from branch_agent.masterdata_snapshot import SnapshotRequester

__all__ = [
    "APPLIED_AT_MS",
    "APPLIED_VERSION",
    "BRANCHES_AT_MS",
    "LAST_STREAM_SEQ",
    "MasterDataApplier",
    "MasterDataStats",
    "SnapshotState",
    "from_epoch_ms",
    "known_branches",
]

log = logging.getLogger(__name__)

APPLIED_VERSION = "applied_version"
# When the agent last applied anything from the down-stream (UTC, epoch ms): its
# "last sync" from central, shown by ``status`` running or not.
APPLIED_AT_MS = "applied_at_ms"
LAST_STREAM_SEQ = "last_stream_seq"
# When central last sent the chain's branch list (``md_branches``; UTC, epoch ms).
BRANCHES_AT_MS = "branches_at_ms"
SNAPSHOT_PENDING = "snapshot_pending"
SNAPSHOT_INCOMPLETE = "snapshot_incomplete"
_VERSION_SUBJECT = down_subject("all", None, KIND_VERSION, VERSION_KEY)


@dataclass(slots=True)
class MasterDataStats:
    applied: int = 0
    stale_skipped: int = 0
    rejected: int = 0
    last_rejection: str = ""
    snapshots_completed: int = 0
    snapshots_incomplete: int = 0


@dataclass(slots=True)
class SnapshotState:
    """The down-stream position and snapshot progress, kept in ``md_state``."""

    last_stream_seq: int = 0
    # Promised by central and not yet complete (0: none).
    pending: int = 0
    # The snapshot being received: its id, the stream sequence of its begin mark, the
    # next part expected, and whether a part was missing on the way.
    current: int = 0
    begin_seq: int = 0
    next_part: int = 0
    broken: bool = False
    # The last snapshot that ended with parts missing, and the last one complete.
    incomplete: int = 0
    completed: int = 0
    # The snapshot being received began at or below the position: the stream numbers
    # below it (created again after the NATS server lost it), and the position moves
    # to the new numbers at the snapshot's end.
    rebase: bool = False


_SNAPSHOT_FIELDS = (
    (SNAPSHOT_PENDING, "pending"),
    ("snapshot_current", "current"),
    ("snapshot_begin_seq", "begin_seq"),
    ("snapshot_next_part", "next_part"),
    ("snapshot_broken", "broken"),
    (SNAPSHOT_INCOMPLETE, "incomplete"),
    ("snapshot_completed", "completed"),
    ("snapshot_rebase", "rebase"),
)


class MasterDataApplier:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        write_lock: asyncio.Lock,
        *,
        timezone: str = "UTC",
    ) -> None:
        self._sessionmaker = sessionmaker
        self._write_lock = write_lock
        self.timezone = timezone
        self.applied_version = 0
        self.applied_at: datetime | None = None
        self.stats = MasterDataStats()
        self.snapshot = SnapshotState()
        self.requester: SnapshotRequester | None = None
        self._on_snapshot_end: Callable[[], None] | None = None
        # When messages numbered below the position last made us report (monotonic).
        self._below_reported_at: float | None = None
        # branch_list_digest of md_branches ("": no list yet), reported to central.
        self.branches_digest = ""
        set_local_timezone(timezone)

    def register(self, reader: DownstreamReader) -> None:
        from branch_agent.masterdata_snapshot import SnapshotRequester

        reader.register_batch(
            (KIND_PRODUCT, KIND_PRICE, KIND_PROMOTION, KIND_VERSION, KIND_SNAPSHOT),
            self.handle_batch,
        )
        self.requester = SnapshotRequester(reader.branch, self)
        self._on_snapshot_end = self.requester.poke
        reader.on_position = self.note_position
        reader.on_fetch_error = self.requester.on_fetch_error
        reader.before_first_fetch = self.requester.wait_first_check

    async def keep_position(self, nc: Client, stop: asyncio.Event) -> None:
        """Report the position to central and take the snapshots it decides on."""
        if self.requester is not None:
            await self.requester.run(nc, stop)

    async def load(self) -> int:
        """The applied version and snapshot state kept in the database (after a restart)."""
        async with self._sessionmaker() as session:
            values = dict((await session.execute(select(MdState.name, MdState.value))).all())
            codes = list(await session.scalars(select(MdBranch.code)))
        self.branches_digest = branch_list_digest(codes) if codes else ""
        self.applied_version = int(values.get(APPLIED_VERSION) or 0)
        self.applied_at = from_epoch_ms(values.get(APPLIED_AT_MS))
        snap = SnapshotState(last_stream_seq=int(values.get(LAST_STREAM_SEQ) or 0))
        for name, attr in _SNAPSHOT_FIELDS:
            value = int(values.get(name) or 0)
            setattr(snap, attr, bool(value) if attr in ("broken", "rebase") else value)
        self.snapshot = snap
        return self.applied_version

    async def handle(self, message: DownMessage) -> None:
        await self.handle_batch([message])

    async def note_position(self, stream_seq: int) -> None:
        """Messages of other kinds (commands) were acked up to ``stream_seq``: kept, so
        central can tell the branch's position from a lost one (see ``SnapshotRequest``)."""
        if stream_seq <= self.snapshot.last_stream_seq:
            return
        engine = self._sessionmaker.kw["bind"]
        async with self._write_lock, engine.begin() as conn:
            await _set_state(conn, LAST_STREAM_SEQ, stream_seq, keep_max=True)
        self.snapshot.last_stream_seq = max(self.snapshot.last_stream_seq, stream_seq)

    async def set_branches(self, codes: tuple[str, ...]) -> None:
        """Central's list of the chain's branch codes (its answer to the position
        report): kept whole in ``md_branches``, replacing the one before."""
        engine = self._sessionmaker.kw["bind"]
        async with self._write_lock, engine.begin() as conn:
            await conn.execute(delete(MdBranch))
            if codes:
                await conn.execute(insert(MdBranch), [{"code": code} for code in set(codes)])
            await _set_state(conn, BRANCHES_AT_MS, int(time.time() * 1000), keep_max=False)
        self.branches_digest = branch_list_digest(codes) if codes else ""
        log.info("central listed %d branches of the chain", len(set(codes)))

    async def set_pending_snapshot(self, snapshot_id: int) -> None:
        """Central promised snapshot ``snapshot_id``: the applied version is held until
        it is complete (the replica is not central's state before)."""
        if snapshot_id <= self.snapshot.completed or snapshot_id <= self.snapshot.pending:
            return
        engine = self._sessionmaker.kw["bind"]
        async with self._write_lock, engine.begin() as conn:
            await _set_state(conn, SNAPSHOT_PENDING, snapshot_id, keep_max=False)
            await _set_state(conn, SNAPSHOT_INCOMPLETE, 0, keep_max=False)
        self.snapshot.pending = snapshot_id
        self.snapshot.incomplete = 0

    async def handle_batch(self, messages: list[DownMessage]) -> None:
        """Apply a run of messages in stream order, in one SQLite transaction."""
        decoded_messages: list[tuple[DownMessage, MasterDataMessage]] = []
        for message in messages:
            try:
                decoded = decode_masterdata(message.data)
                self._check_scope(message, decoded)
            except (WireDecodeError, ValueError) as exc:
                # A malformed message must not block the stream: counted, logged, acked.
                self.stats.rejected += 1
                self.stats.last_rejection = f"{message.subject}: {exc}"
                log.error("rejected down-stream message %s: %s", message.subject, exc)
                continue
            decoded_messages.append((message, decoded))
        # Every message of the run is acked after it: the position covers them all.
        last_seq = max((m.stream_seq for m in messages), default=0)
        self._check_numbering(messages)
        engine = self._sessionmaker.kw["bind"]
        snap = replace(self.snapshot)
        applied_version = self.applied_version
        applied = stale = 0
        finished: list[str] = []
        rebased = False
        applied_at = self.applied_at
        # Core statements on one connection: a bucket is thousands of rows, no ORM needed;
        # one commit (one fsync) for the whole run instead of one per message.
        async with self._write_lock, engine.begin() as conn:
            # A bucket run writes up to ~100,000 rows: a larger page cache than the 2 MB default
            # spills less mid-transaction; 8 MB keeps the agent inside its memory budget.
            await conn.exec_driver_sql("PRAGMA cache_size=-8192")
            subjects = list(
                dict.fromkeys(
                    d.subject if isinstance(d, SnapshotPart) else m.subject
                    for m, d in decoded_messages
                )
            )
            # The per-subject guard, read and written once per run (not per message).
            known: dict[str, int] = {}
            for start in range(0, len(subjects), 500):
                chunk = subjects[start : start + 500]
                known.update(
                    (
                        await conn.exec_driver_sql(
                            "SELECT subject, version FROM md_applied_keys WHERE subject IN "
                            f"({', '.join('?' * len(chunk))})",
                            tuple(chunk),
                        )
                    ).all()
                )
            written: dict[str, tuple[int, int]] = {}
            prices = _PriceWriter()
            for message, decoded in decoded_messages:
                if isinstance(decoded, SnapshotMark):
                    if decoded.phase == "begin":
                        snap.current, snap.begin_seq = decoded.snapshot_id, message.stream_seq
                        snap.next_part, snap.broken = 1, False
                        snap.rebase = message.stream_seq <= snap.last_stream_seq
                        await _forget_refreshes_from(conn, message.stream_seq)
                    else:
                        await _replace_price_buckets(conn, prices.take(), prices)
                        await _write_applied_keys(conn, written)
                        written.clear()
                        outcome = await self._end_snapshot(conn, snap, decoded)
                        if outcome == "complete":
                            applied_version = max(applied_version, decoded.version)
                            rebased |= snap.rebase
                            snap.rebase = False
                        finished.append(outcome)
                    applied += 1
                    continue
                target, subject = message, message.subject
                value: ProductBucket | PriceBucket | PromotionRecord | VersionMark
                if isinstance(decoded, SnapshotPart):
                    if decoded.snapshot_id == snap.current:
                        if decoded.part < snap.next_part:
                            stale += 1  # redelivered after a lost ack: applied already
                            continue
                        snap.broken |= decoded.part > snap.next_part
                        snap.next_part = decoded.part + 1
                    subject, value = decoded.subject, decoded.message
                    scope, scope_id, kind, key = parse_down_subject(subject)
                    target = DownMessage(
                        subject, scope, scope_id, kind, key, b"", message.stream_seq
                    )
                else:
                    value = decoded
                stored = known.get(subject)
                if stored is not None and stored > value.version:
                    stale += 1
                    # Still refreshed by a snapshot: a newer value is applied already.
                    written[subject] = (stored, message.stream_seq)
                    continue
                if isinstance(value, VersionMark):
                    if not snap.pending:
                        # While a snapshot is awaited the replica is not central's state:
                        # its end sets the applied version instead.
                        await _set_state(conn, APPLIED_VERSION, value.version, keep_max=True)
                        applied_version = max(applied_version, value.version)
                else:
                    await self._apply(conn, target, value, prices)
                known[subject] = value.version
                written[subject] = (value.version, message.stream_seq)
                applied += 1
            await _replace_price_buckets(conn, prices.take(), prices)
            await _write_applied_keys(conn, written)
            if applied:
                # Kept in ms, shown as kept: the running and the stopped view agree.
                now_ms = int(datetime.now(UTC).timestamp() * 1000)
                await _set_state(conn, APPLIED_AT_MS, now_ms, keep_max=True)
                applied_at = from_epoch_ms(now_ms)
            if rebased and last_seq:
                # The replica is the new stream's snapshot now: its numbers are the
                # position (the old, higher ones would hide what the branch misses).
                await _set_state(conn, LAST_STREAM_SEQ, last_seq, keep_max=False)
                snap.last_stream_seq = last_seq
                log.warning("master-data position moved to the new stream's numbers: %d", last_seq)
            elif last_seq:
                await _set_state(conn, LAST_STREAM_SEQ, last_seq, keep_max=True)
                snap.last_stream_seq = max(snap.last_stream_seq, last_seq)
            if snap != self.snapshot:
                await _write_snapshot_state(conn, snap)
            # Back to SQLite's default: the pooled connection would otherwise keep a
            # larger cache each (with 32 MB the resident memory grew by ~90 MB).
            await conn.exec_driver_sql("PRAGMA cache_size=-2000")
        self.snapshot = snap
        self.applied_version = applied_version
        self.applied_at = applied_at
        self.stats.applied += applied
        self.stats.stale_skipped += stale
        for outcome in finished:
            self.stats.snapshots_completed += outcome == "complete"
            self.stats.snapshots_incomplete += outcome == "incomplete"
        if finished and self._on_snapshot_end is not None:
            self._on_snapshot_end()

    def _check_numbering(self, messages: list[DownMessage]) -> None:
        """Messages handed out for the first time at or below the position: the stream
        may have been created again below it (the NATS server lost it, and central could
        not number the new one above every branch). Their changes are applied all the
        same (the version guard goes by versions, not numbers), but the branch may have
        missed what the old stream held, and its position would hide from central
        whatever it misses later: report it now, and central decides on a snapshot (a
        consumer created again on the same stream also replays old numbers: then none)."""
        if self.snapshot.pending or self.requester is None:
            return
        below = [
            m.stream_seq
            for m in messages
            if m.delivered == 1 and m.stream_seq <= self.snapshot.last_stream_seq
        ]
        now = time.monotonic()
        if not below or (
            self._below_reported_at is not None and now - self._below_reported_at < 30.0
        ):
            return
        self._below_reported_at = now
        log.warning(
            "down-stream message %d handed out first at or below the position %d: "
            "reporting the position to central",
            min(below),
            self.snapshot.last_stream_seq,
        )
        self.requester.poke()

    async def _end_snapshot(
        self, conn: AsyncConnection, snap: SnapshotState, mark: SnapshotMark
    ) -> str:
        """At a snapshot's end: drop what it did not refresh (complete), or ask again."""
        if snap.current != mark.snapshot_id or snap.broken or snap.next_part != mark.parts + 1:
            log.warning(
                "master-data snapshot %s incomplete (%s of %s parts in order)",
                mark.snapshot_id,
                snap.next_part - 1 if snap.current == mark.snapshot_id else 0,
                mark.parts,
            )
            snap.current = 0
            if snap.pending and mark.snapshot_id >= snap.pending:
                snap.incomplete = mark.snapshot_id
            return "incomplete"
        await _drop_unrefreshed(conn, snap.begin_seq)
        snap.current = 0
        snap.completed = max(snap.completed, mark.snapshot_id)
        if snap.pending <= mark.snapshot_id:
            snap.pending = 0
        snap.incomplete = 0
        await _set_state(conn, APPLIED_VERSION, mark.version, keep_max=True)
        log.info("master-data snapshot %s applied (%s parts)", mark.snapshot_id, mark.parts)
        return "complete"

    @staticmethod
    def _check_scope(message: DownMessage, decoded: MasterDataMessage) -> None:
        if isinstance(decoded, SnapshotMark | SnapshotPart):
            if message.kind != KIND_SNAPSHOT or message.scope != "branch":
                raise ValueError(f"a {type(decoded).__name__} outside a branch's snapshot")
            if isinstance(decoded, SnapshotPart):
                scope, scope_id, kind, key = parse_down_subject(decoded.subject)
                inner = DownMessage(decoded.subject, scope, scope_id, kind, key, b"", 0)
                MasterDataApplier._check_scope(inner, decoded.message)
            return
        if isinstance(decoded, ProductBucket | PriceBucket) and (
            decoded.scope != message.scope or (decoded.scope_id or None) != message.scope_id
        ):
            raise ValueError("payload scope differs from the subject's")
        expected = {
            ProductBucket: KIND_PRODUCT,
            PriceBucket: KIND_PRICE,
            PromotionRecord: KIND_PROMOTION,
            VersionMark: KIND_VERSION,
        }[type(decoded)]
        if expected != message.kind:
            raise ValueError(f"a {type(decoded).__name__} on a {message.kind} subject")

    async def _apply(
        self,
        conn: AsyncConnection,
        message: DownMessage,
        decoded: ProductBucket | PriceBucket | PromotionRecord,
        prices: _PriceWriter,
    ) -> None:
        scope_id = message.scope_id or ""
        if isinstance(decoded, ProductBucket):
            await _replace_products(conn, decoded, scope_id)
        elif isinstance(decoded, PriceBucket):
            # Queued: applied together in the driver's thread (see _replace_price_buckets).
            prices.pending.append((decoded, scope_id))
        else:
            await _replace_promotion(conn, decoded, message.scope, scope_id)


async def _write_applied_keys(conn: AsyncConnection, written: dict[str, tuple[int, int]]) -> None:
    if written:
        await conn.exec_driver_sql(
            "INSERT INTO md_applied_keys (subject, version, stream_seq) VALUES (?, ?, ?) "
            "ON CONFLICT (subject) DO UPDATE SET version = excluded.version, "
            "stream_seq = excluded.stream_seq",
            [(subject, v, seq) for subject, (v, seq) in written.items()],
        )


async def _forget_refreshes_from(conn: AsyncConnection, begin_seq: int) -> None:
    """A snapshot begins at ``begin_seq``: keys recorded at or above it were not refreshed
    by it. Normally there are none; after the stream was created again below the
    branch's position every key holds an old, higher number, and its end would keep
    them all (see ``_drop_unrefreshed``). Its parts record them again."""
    await conn.exec_driver_sql(
        "UPDATE md_applied_keys SET stream_seq = 0 WHERE stream_seq >= ? AND subject != ?",
        (begin_seq, _VERSION_SUBJECT),
    )


async def _write_snapshot_state(conn: AsyncConnection, snap: SnapshotState) -> None:
    await conn.exec_driver_sql(
        "INSERT INTO md_state (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [(name, int(getattr(snap, attr))) for name, attr in _SNAPSHOT_FIELDS],
    )


async def _drop_unrefreshed(conn: AsyncConnection, begin_seq: int) -> None:
    """Delete every replica key a complete snapshot did not refresh (a product or price
    bucket of a scope the branch no longer reads, a promotion withdrawn while its
    withdrawal aged out of the stream...), so the replica is exactly central's."""
    kept = {
        row[0]
        for row in await conn.exec_driver_sql(
            "SELECT subject FROM md_applied_keys WHERE stream_seq >= ?", (begin_seq,)
        )
    }
    kept.add(_VERSION_SUBJECT)
    for table, kind in (
        ("md_products", KIND_PRODUCT),
        ("md_barcodes", KIND_PRODUCT),
        ("md_price_buckets", KIND_PRICE),
    ):
        keys = await conn.exec_driver_sql(f"SELECT DISTINCT scope, scope_id, bucket FROM {table}")
        gone = [
            (scope, scope_id, bucket)
            for scope, scope_id, bucket in cast("list[tuple[str, str, int]]", keys.all())
            if down_subject(scope, scope_id or None, kind, bucket_key(bucket)) not in kept
        ]
        if gone:
            dropped: list[tuple[Any, ...]] = []
            if table == "md_products":
                for key in gone:
                    dropped.extend(await _bucket_facts(conn, key))
            await conn.exec_driver_sql(
                f"DELETE FROM {table} WHERE scope = ? AND scope_id = ? AND bucket = ?",
                gone,
            )
            if dropped:
                await _remember_former(conn, dropped)
    # Price rows follow their buckets' values: any row no bucket lists goes (one pass,
    # without an index on the bucket; a snapshot is rare).
    await conn.exec_driver_sql(
        "DELETE FROM md_prices WHERE id NOT IN (SELECT value FROM md_price_buckets, "
        "json_each(md_price_buckets.rows, '$.ids'))"
    )
    promotions = await conn.exec_driver_sql(
        "SELECT scope, scope_id, promotion_id FROM md_promotions"
    )
    gone_promotions = [
        (scope, scope_id, promotion_id)
        for scope, scope_id, promotion_id in cast("list[tuple[str, str, str]]", promotions.all())
        if down_subject(scope, scope_id or None, KIND_PROMOTION, promotion_id) not in kept
    ]
    if gone_promotions:
        await conn.exec_driver_sql(
            "DELETE FROM md_promotions WHERE scope = ? AND scope_id = ? AND promotion_id = ?",
            gone_promotions,
        )
    await conn.exec_driver_sql(
        "DELETE FROM md_applied_keys WHERE stream_seq < ? AND subject != ?",
        (begin_seq, _VERSION_SUBJECT),
    )


async def known_branches(session: AsyncSession) -> tuple[set[str], datetime | None]:
    """The chain's branch codes as central last listed them, and when it did (an empty
    set: no list yet, e.g. a new database before central answered, or a central from
    before the list)."""
    codes = set(await session.scalars(select(MdBranch.code)))
    at = await session.scalar(select(MdState.value).where(MdState.name == BRANCHES_AT_MS))
    return codes, from_epoch_ms(at)


def from_epoch_ms(value: int | None) -> datetime | None:
    """An ``md_state`` moment (UTC epoch ms; None or 0: never)."""
    return datetime.fromtimestamp(value / 1000, UTC) if value else None


async def _set_state(conn: AsyncConnection, name: str, value: int, *, keep_max: bool) -> None:
    stmt = sqlite_insert(MdState).values(name=name, value=value)
    new_value: Any = stmt.excluded.value
    if keep_max:
        from sqlalchemy import func

        new_value = func.max(MdState.value, stmt.excluded.value)
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=[MdState.name], set_={"value": new_value})
    )


# The facts of a product kept when it leaves the assortment (former_products).
_FACTS = "sku, name, unit, weighed"


async def _remember_former(conn: AsyncConnection, dropped: list[tuple[Any, ...]]) -> None:
    """Keep the facts of dropped ``md_products`` rows whose product has no row left at
    any scope: it left the branch's assortment, and its stock must still go out."""
    facts = {row[0]: row for row in dropped}
    still: set[str] = set()
    skus = sorted(facts)
    for start in range(0, len(skus), 500):
        chunk = skus[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        found = await conn.exec_driver_sql(
            f"SELECT DISTINCT sku FROM md_products WHERE sku IN ({marks})", tuple(chunk)
        )
        still.update(row[0] for row in found)
    gone = [facts[sku] for sku in skus if sku not in still]
    if gone:
        left_at = datetime.now(UTC)
        upsert = sqlite_insert(FormerProduct)
        columns = ("name", "unit", "weighed", "left_at", "facts")
        await conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[FormerProduct.sku],
                set_={c: upsert.excluded[c] for c in columns},
            ),
            [
                {
                    "sku": sku,
                    "name": name,
                    "unit": unit,
                    "weighed": bool(weighed),
                    "left_at": left_at,
                    "facts": "master_data",
                }
                for sku, name, unit, weighed in gone
            ],
        )


async def _bucket_facts(conn: AsyncConnection, key: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The product facts (``_FACTS``) of one bucket's rows: (scope, scope_id, bucket)."""
    rows = await conn.exec_driver_sql(
        f"SELECT {_FACTS} FROM md_products WHERE scope = ? AND scope_id = ? AND bucket = ?", key
    )
    return [tuple(row) for row in rows]


async def _replace_products(conn: AsyncConnection, bucket: ProductBucket, scope_id: str) -> None:
    where = (
        (MdProduct.scope == bucket.scope)
        & (MdProduct.scope_id == scope_id)
        & (MdProduct.bucket == bucket.bucket)
    )
    key = (bucket.scope, scope_id, bucket.bucket)
    listed = {p.sku for p in bucket.products}
    # Rows this message drops (their products may have left the assortment).
    dropped = [row for row in await _bucket_facts(conn, key) if row[0] not in listed]
    await conn.execute(delete(MdProduct).where(where))
    await conn.execute(
        delete(MdBarcode).where(
            (MdBarcode.scope == bucket.scope)
            & (MdBarcode.scope_id == scope_id)
            & (MdBarcode.bucket == bucket.bucket)
        )
    )
    if dropped:
        await _remember_former(conn, dropped)
    if not bucket.products:
        return
    # Straight to the driver's executemany: a bucket is thousands of rows and
    # SQLAlchemy's per-row compilation would dominate the apply time.
    await conn.exec_driver_sql(
        "INSERT INTO md_products (scope, scope_id, sku, bucket, name, unit, weighed, "
        "scale_plu, category, category_path, vat_rate_bp, vat_group, version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                bucket.scope,
                scope_id,
                p.sku,
                bucket.bucket,
                p.name,
                p.unit,
                1 if p.weighed else 0,
                p.scale_plu,
                p.category,
                "/".join(p.category_path),
                p.vat_rate_bp,
                p.vat_group,
                p.version,
            )
            for p in bucket.products
        ],
    )
    codes = [
        (bucket.scope, scope_id, code, p.sku, bucket.bucket)
        for p in bucket.products
        for code in dict.fromkeys(p.barcodes)
    ]
    if codes:
        await conn.exec_driver_sql(
            "INSERT INTO md_barcodes (scope, scope_id, barcode, sku, bucket) "
            "VALUES (?, ?, ?, ?, ?)",
            codes,
        )
    # A product back in the assortment is no former product any more.
    await conn.exec_driver_sql(
        "DELETE FROM former_products WHERE sku IN (SELECT sku FROM md_products "
        "WHERE scope = ? AND scope_id = ? AND bucket = ?)",
        key,
    )


# (sku, price, effective_at as stored, effective_local, version)
_PriceRow = tuple[str, int, str, str | None, int]


class _StoredBucket(msgspec.Struct, gc=False):
    """``md_price_buckets.rows``: the ids of a bucket's rows and their values."""

    ids: list[int]
    rows: list[_PriceRow]


_stored_bucket_decoder = msgspec.json.Decoder(_StoredBucket)
_stored_bucket_encoder = msgspec.json.Encoder()


class _MomentTexts(dict[datetime, str]):
    """A UTC moment -> its stored text, formatted once per distinct moment."""

    def __missing__(self, moment: datetime) -> str:
        text = self[moment] = _sqlite_utc(moment)
        return text


@dataclass(slots=True)
class _PriceWriter:
    """State shared by the price buckets of one transaction."""

    moments: _MomentTexts = field(default_factory=_MomentTexts)
    # The next md_prices id (read once per transaction: only the applier writes
    # md_prices, under the agent's write lock).
    next_id: int = 0
    # Buckets waiting to be applied, in stream order.
    pending: list[tuple[PriceBucket, str]] = field(default_factory=list)

    def take(self) -> list[tuple[PriceBucket, str]]:
        taken, self.pending = self.pending, []
        return taken


async def _replace_price_buckets(
    conn: AsyncConnection, buckets: list[tuple[PriceBucket, str]], writer: _PriceWriter
) -> None:
    """Apply price buckets (in order) in the driver's thread in one call.

    Through the async engine every statement is a hop to aiosqlite's thread and back
    (~0.2 ms of CPU each, a third of a bulk's apply cost); a bucket is three
    statements. Same connection, so same transaction as the rest of the run.
    """
    if not buckets:
        return
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    db = cast("sqlite3.Connection", driver._conn)  # type: ignore[union-attr]
    if isinstance(driver, aiosqlite.Connection):
        await driver._execute(_replace_prices_sync, db, buckets, writer)  # type: ignore[no-untyped-call]
    else:  # the inline engine: its calls run in this thread anyway
        _replace_prices_sync(db, buckets, writer)


def _replace_prices_sync(
    db: sqlite3.Connection, buckets: list[tuple[PriceBucket, str]], writer: _PriceWriter
) -> None:
    for bucket, scope_id in buckets:
        _replace_prices(db, bucket, scope_id, writer)


def _replace_prices(
    db: sqlite3.Connection, bucket: PriceBucket, scope_id: str, writer: _PriceWriter
) -> None:
    """Make the bucket's rows at this scope exactly the message's entries.

    Written as a difference: a bucket message repeats every entry still in force, so
    a change of one price is one inserted row (and the superseded entry, once
    pruned, one deleted row) instead of rewriting the bucket's hundreds of rows. The
    rows stored are compared as tuples with the message's, from the bucket's one
    ``md_price_buckets`` value (no per-row read).
    """
    key = (bucket.scope, scope_id, bucket.bucket)
    found = db.execute(
        "SELECT rows FROM md_price_buckets WHERE scope = ? AND scope_id = ? AND bucket = ?", key
    ).fetchone()
    stored = _stored_bucket_decoder.decode(found[0]) if found is not None else _StoredBucket([], [])
    moments = writer.moments
    wanted = [
        (e.sku, e.price, moments[e.effective_at], e.effective_local, e.version)
        for e in bucket.entries
    ]
    current = dict(zip(stored.rows, stored.ids, strict=True))
    wanted_set = set(wanted)
    if len(current) == len(stored.ids) and len(wanted_set) == len(wanted):
        # No identical entries twice (the usual case): plain set differences.
        added = [row for row in wanted if row not in current]
        stale = [current.pop(row) for row in current.keys() - wanted_set]
        ids, rows = list(current.values()), list(current.keys())
    else:
        added, stale, ids, rows = _difference_with_repeats(stored, wanted)
    if stale:
        db.executemany("DELETE FROM md_prices WHERE id = ?", [(i,) for i in stale])
    if added:
        if not writer.next_id:
            top = db.execute("SELECT max(id) FROM md_prices").fetchone()[0]
            writer.next_id = int(top or 0) + 1
        first = writer.next_id
        writer.next_id += len(added)
        new_ids = range(first, writer.next_id)
        db.executemany(
            "INSERT INTO md_prices (id, scope, scope_id, bucket, sku, price, effective_at, "
            "effective_local, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(i, *key, *row) for i, row in zip(new_ids, added, strict=True)],
        )
        ids.extend(new_ids)
        rows.extend(added)
    if not stale and not added:
        return
    if rows:
        db.execute(
            "INSERT INTO md_price_buckets (scope, scope_id, bucket, rows) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, scope_id, bucket) DO UPDATE SET rows = excluded.rows",
            (*key, _stored_bucket_encoder.encode(_StoredBucket(ids, rows)).decode()),
        )
    else:
        db.execute(
            "DELETE FROM md_price_buckets WHERE scope = ? AND scope_id = ? AND bucket = ?", key
        )


def _difference_with_repeats(
    stored: _StoredBucket, wanted: list[_PriceRow]
) -> tuple[list[_PriceRow], list[int], list[int], list[_PriceRow]]:
    """The difference when an entry occurs more than once: kept with its multiplicity.

    Returns the rows to add, the ids to delete, and the ids and rows kept."""
    have: dict[_PriceRow, list[int]] = {}
    for row_id, row in zip(stored.ids, stored.rows, strict=True):
        have.setdefault(row, []).append(row_id)
    need = Counter(wanted)
    added: list[_PriceRow] = []
    stale: list[int] = []
    ids: list[int] = []
    rows: list[_PriceRow] = []
    for row, row_ids in have.items():
        keep = min(len(row_ids), need.get(row, 0))
        stale.extend(row_ids[keep:])
        ids.extend(row_ids[:keep])
        rows.extend([row] * keep)
    for row, count in need.items():
        added.extend([row] * (count - min(count, len(have.get(row, ())))))
    return added, stale, ids, rows


def _sqlite_utc(moment: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (naive UTC), so the ORM reads it back."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


async def _replace_promotion(
    conn: AsyncConnection, record: PromotionRecord, scope: str, scope_id: str
) -> None:
    await conn.execute(
        delete(MdPromotion).where(
            (MdPromotion.scope == scope)
            & (MdPromotion.scope_id == scope_id)
            & (MdPromotion.promotion_id == record.promotion_id)
        )
    )
    if record.deleted:
        return
    await conn.execute(
        insert(MdPromotion).values(
            scope=scope,
            scope_id=scope_id,
            promotion_id=record.promotion_id,
            version=record.version,
            ends_at=record.ends_at,
            body=encode_masterdata(record),
        )
    )
