"""The applier of master data from central: catalog, prices, promotions, versions.

Registered on the agent's down-stream reader for the master-data kinds. Each
message is applied in one SQLite transaction (under the agent's write lock) and
acked by the reader afterwards, so a crash re-delivers it; applying is
idempotent because a bucket message *replaces* its bucket's rows at its scope,
and a per-subject version guard skips an older message redelivered after a newer
one. A ``VersionMark`` sets the applied version that the heartbeat reports.

Catching up: the durable consumer resumes where it stopped; the down stream keeps
only the latest message per subject, so an agent that was offline for weeks gets
exactly the current value of every key, never the intermediate ones. An agent
that lost its database (or a new agent on an existing consumer) needs its consumer
rewound to the stream's start, which replays the latest value of every key: a full
snapshot. Central does not yet do that rewind automatically (see docs/masterdata.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from branch_agent.catalog import set_local_timezone
from branch_agent.downstream import DownMessage, DownstreamReader
from branch_agent.masterdata_models import (
    MdBarcode,
    MdProduct,
    MdPromotion,
    MdState,
)
from protocol.codec import WireDecodeError
from protocol.masterdata import (
    KIND_PRICE,
    KIND_PRODUCT,
    KIND_PROMOTION,
    KIND_VERSION,
    MasterDataMessage,
    PriceBucket,
    ProductBucket,
    PromotionRecord,
    VersionMark,
    decode_masterdata,
    encode_masterdata,
)

__all__ = ["MasterDataApplier", "MasterDataStats"]

log = logging.getLogger(__name__)

APPLIED_VERSION = "applied_version"
LAST_STREAM_SEQ = "last_stream_seq"


@dataclass(slots=True)
class MasterDataStats:
    applied: int = 0
    stale_skipped: int = 0
    rejected: int = 0
    last_rejection: str = ""


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
        self.stats = MasterDataStats()
        set_local_timezone(timezone)

    def register(self, reader: DownstreamReader) -> None:
        reader.register_batch(
            (KIND_PRODUCT, KIND_PRICE, KIND_PROMOTION, KIND_VERSION), self.handle_batch
        )

    async def load(self) -> int:
        """The applied version kept in the database (after a restart)."""
        async with self._sessionmaker() as session:
            value = await session.scalar(
                select(MdState.value).where(MdState.name == APPLIED_VERSION)
            )
        self.applied_version = int(value or 0)
        return self.applied_version

    async def handle(self, message: DownMessage) -> None:
        await self.handle_batch([message])

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
        if not decoded_messages:
            return
        engine = self._sessionmaker.kw["bind"]
        results: list[tuple[MasterDataMessage, bool]] = []
        # Core statements on one connection: a bucket is thousands of rows, no ORM needed;
        # one commit (one fsync) for the whole run instead of one per message.
        async with self._write_lock, engine.begin() as conn:
            # A bucket run writes up to ~100,000 rows: a larger page cache than the 2 MB default
            # spills less mid-transaction; 8 MB keeps the agent inside its memory budget.
            await conn.exec_driver_sql("PRAGMA cache_size=-8192")
            subjects = list(dict.fromkeys(m.subject for m, _ in decoded_messages))
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
            for message, decoded in decoded_messages:
                stored = known.get(message.subject)
                if stored is not None and stored > decoded.version:
                    results.append((decoded, False))
                    continue
                await self._apply(conn, message, decoded)
                known[message.subject] = decoded.version
                written[message.subject] = (decoded.version, message.stream_seq)
                results.append((decoded, True))
            if written:
                await conn.exec_driver_sql(
                    "INSERT INTO md_applied_keys (subject, version, stream_seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (subject) DO UPDATE SET version = excluded.version, "
                    "stream_seq = excluded.stream_seq",
                    [(subject, v, seq) for subject, (v, seq) in written.items()],
                )
                last_seq = max(seq for _, seq in written.values())
                await _set_state(conn, LAST_STREAM_SEQ, last_seq, keep_max=True)
            # Back to SQLite's default: the pooled connection would otherwise keep a
            # larger cache each (with 32 MB the resident memory grew by ~90 MB).
            await conn.exec_driver_sql("PRAGMA cache_size=-2000")
        for decoded, applied in results:
            if applied:
                self.stats.applied += 1
                if isinstance(decoded, VersionMark):
                    self.applied_version = max(self.applied_version, decoded.version)
            else:
                self.stats.stale_skipped += 1

    @staticmethod
    def _check_scope(message: DownMessage, decoded: MasterDataMessage) -> None:
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
        self, conn: AsyncConnection, message: DownMessage, decoded: MasterDataMessage
    ) -> None:
        scope_id = message.scope_id or ""
        if isinstance(decoded, ProductBucket):
            await _replace_products(conn, decoded, scope_id)
        elif isinstance(decoded, PriceBucket):
            await _replace_prices(conn, decoded, scope_id)
        elif isinstance(decoded, PromotionRecord):
            await _replace_promotion(conn, decoded, message.scope, scope_id)
        else:
            await _set_state(conn, APPLIED_VERSION, decoded.version, keep_max=True)


async def _set_state(conn: AsyncConnection, name: str, value: int, *, keep_max: bool) -> None:
    stmt = sqlite_insert(MdState).values(name=name, value=value)
    new_value: Any = stmt.excluded.value
    if keep_max:
        from sqlalchemy import func

        new_value = func.max(MdState.value, stmt.excluded.value)
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=[MdState.name], set_={"value": new_value})
    )


async def _replace_products(conn: AsyncConnection, bucket: ProductBucket, scope_id: str) -> None:
    where = (
        (MdProduct.scope == bucket.scope)
        & (MdProduct.scope_id == scope_id)
        & (MdProduct.bucket == bucket.bucket)
    )
    await conn.execute(delete(MdProduct).where(where))
    await conn.execute(
        delete(MdBarcode).where(
            (MdBarcode.scope == bucket.scope)
            & (MdBarcode.scope_id == scope_id)
            & (MdBarcode.bucket == bucket.bucket)
        )
    )
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


async def _replace_prices(conn: AsyncConnection, bucket: PriceBucket, scope_id: str) -> None:
    """Make the bucket's rows at this scope exactly the message's entries.

    Written as a difference: a bucket message repeats every entry still in force, so
    a change of one price is one inserted row (and the superseded entry, once
    pruned, one deleted row) instead of rewriting the bucket's hundreds of rows.
    """
    existing = await conn.exec_driver_sql(
        "SELECT id, sku, price, effective_at, effective_local, version FROM md_prices "
        "WHERE scope = ? AND scope_id = ? AND bucket = ?",
        (bucket.scope, scope_id, bucket.bucket),
    )
    # Rows as they are stored: identical ones are kept (with their multiplicity).
    moments: dict[datetime, str] = {}
    wanted: dict[tuple[str, int, str, str | None, int], int] = defaultdict(int)
    for e in bucket.entries:
        text = moments.get(e.effective_at) or _moment(moments, e.effective_at)
        wanted[(e.sku, e.price, text, e.effective_local, e.version)] += 1
    stale: list[tuple[int]] = []
    for row in cast("list[tuple[Any, ...]]", existing.all()):
        key = (row[1], row[2], row[3], row[4], row[5])
        if wanted.get(key, 0) > 0:
            wanted[key] -= 1
        else:
            stale.append((row[0],))
    if stale:
        await conn.exec_driver_sql("DELETE FROM md_prices WHERE id = ?", stale)
    rows = [
        (bucket.scope, scope_id, bucket.bucket, sku, price, text, local, version)
        for (sku, price, text, local, version), count in wanted.items()
        for _ in range(count)
    ]
    if rows:
        await conn.exec_driver_sql(
            "INSERT INTO md_prices (scope, scope_id, bucket, sku, price, effective_at, "
            "effective_local, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _moment(cache: dict[datetime, str], moment: datetime) -> str:
    text = cache[moment] = _sqlite_utc(moment)
    return text


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
