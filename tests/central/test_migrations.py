"""The migrations build exactly the schema the models describe (never recreated), and
roll back (a release rolled back) with the records kept."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from central.db import alembic_config, create_engine, create_sessionmaker, downgrade, upgrade
from central.ingest.worker import IngestWorker
from central.models import Base, BranchScopeHistory, PriceEntryRow, RepricingLine
from central.partitions import include_name
from central.services.branches import add_branch
from central.services.documents import get_document
from central.services.stock import list_transfers
from tests.central.chain_events import BranchBooks, message
from tests.conftest import PG_URL_ENV, central_cli, engine_with_branch


def _diff(connection: Connection) -> list[object]:
    # The same filter as migrations/central/env.py: child partitions are not models.
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": include_name}
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
    finally:
        await engine.dispose()


async def test_upgrade_twice_is_harmless(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    await upgrade(url)
    await upgrade(url)


async def test_every_migration_rolls_back_and_forward(db_url: str, tmp_path: Path) -> None:
    """Through the command line, as an operator rolls a release back."""
    down = central_cli(db_url, tmp_path, "db", "downgrade", "base", "--drop-records")
    assert down["downgraded_to"] == "base"
    heads = ScriptDirectory.from_config(alembic_config(db_url)).get_heads()
    assert central_cli(db_url, tmp_path, "db", "upgrade")["upgraded_to"] == ",".join(heads)
    await test_migrated_schema_matches_the_models(db_url)


async def test_rolling_parts_back_keeps_each_document_whole(db_url: str) -> None:
    """Before 1701 a document was one row: rolled back, a document received in parts is
    the row of its first part with every line and the value of all; upgraded again, it
    reads the same."""
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 9_000, 100)])
    books.document_in_parts(
        "stocktake",
        [("MILK", -1_000, None), ("BREAD", 2_000, None), ("SALT", 3_000, None)],
        per_part=2,
    )
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        stats = await IngestWorker(sessionmaker).process([message(e) for e in books.events])
        assert stats.dead_letters == 0
        async with sessionmaker() as session:
            before = await get_document(session, "B1", "B1-doc-2")
        assert (before.parts, before.parts_received, len(before.lines)) == (2, 2, 3)
        await engine.dispose()
        await downgrade(db_url, "1601", drop_records=True)
        async with engine.connect() as connection:
            documents = (
                await connection.execute(
                    text("SELECT document_id, event_id, value FROM stock_documents ORDER BY 1")
                )
            ).all()
            assert [(d, v) for d, _, v in documents] == [
                ("B1-doc-1", 900),
                ("B1-doc-2", before.value),
            ]
            lines = (
                await connection.execute(
                    text(
                        "SELECT event_id, line_no, sku FROM stock_document_lines "
                        "WHERE event_id = :kept ORDER BY line_no"
                    ),
                    {"kept": documents[1][1]},
                )
            ).all()
            assert [(n, sku) for _, n, sku in lines] == [(1, "MILK"), (2, "BREAD"), (3, "SALT")]
        await engine.dispose()
        await upgrade(db_url)
        async with sessionmaker() as session:
            after = await get_document(session, "B1", "B1-doc-2")
        assert (after.parts, after.parts_received, after.value) == (1, 1, before.value)
        assert [(x.line_no, x.sku, x.quantity_milli) for x in after.lines] == [
            (x.line_no, x.sku, x.quantity_milli) for x in before.lines
        ]
    finally:
        await engine.dispose()


async def test_transfers_before_1710_get_their_documents_and_differences(db_url: str) -> None:
    """Rolled back to 1709 and upgraded again, the transfers stored find their out and
    in documents (parts counted) in stock_documents and read as before: the one received
    short is flagged, the one in transit is in transit (discrepancy rows are not
    rebuilt for them: only their line differences are flagged)."""
    sender, receiver = BranchBooks("B1"), BranchBooks("B2")
    sender.document("goods_receipt", [("MILK", 9_000, 100), ("SALT", 9_000, 10)])
    sender.document_in_parts(
        "transfer_out",
        [("MILK", -2_000, None), ("SALT", -3_000, None)],
        per_part=1,
        counterpart="B2",
        document_id="TO-1",
    )
    sender.document("transfer_out", [("MILK", -1_000, None)], counterpart="B2", document_id="TO-2")
    receiver.document_in_parts(
        "transfer_in",
        [("MILK", 2_000, None), ("SALT", 1_000, None)],
        per_part=1,
        counterpart="B1",
        transfer_ref="TO-1",
    )
    engine = await engine_with_branch(db_url)
    sessionmaker = create_sessionmaker(engine)

    async def listed() -> list[tuple[str, str, str | None, list[int | None]]]:
        async with sessionmaker() as session:
            page = await list_transfers(
                session, branch=None, in_transit_only=False, limit=10, offset=0
            )
            flagged = await list_transfers(
                session,
                branch=None,
                in_transit_only=False,
                discrepancies_only=True,
                limit=10,
                offset=0,
            )
        assert [t.transfer_ref for t in flagged.items] == ["TO-1"]
        return [
            (t.transfer_ref, t.status, t.in_document_id, [x.difference_milli for x in t.lines])
            for t in page.items
        ]

    try:
        async with sessionmaker() as session, session.begin():
            await add_branch(session, code="B2", name="B2")
        worker = IngestWorker(sessionmaker)
        assert (await worker.process([message(e) for e in sender.events])).dead_letters == 0
        assert (await worker.process([message(e) for e in receiver.events])).dead_letters == 0
        before = await listed()
        assert before == [
            ("TO-1", "received_with_differences", "B2-doc-1", [0, -2_000]),
            ("TO-2", "in_transit", None, [None]),
        ]
        await engine.dispose()
        await downgrade(db_url, "1709", drop_records=True)
        await upgrade(db_url)
        assert await listed() == before
    finally:
        await engine.dispose()


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"needs {PG_URL_ENV}")
async def test_rolling_the_backlog_back_waits_until_it_is_applied(
    pg_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Before 1601 ingestion wrote the summaries itself: rows still in the backlog would
    be lost to the older release's reports, so going back is refused until they are
    applied."""
    books = BranchBooks("B1")
    books.document("goods_receipt", [("MILK", 9_000, 100)])
    books.sale([("MILK", 1_000, 199)])
    stats = await IngestWorker(create_sessionmaker(pg_engine)).process(
        [message(e) for e in books.events]
    )
    assert stats.dead_letters == 0
    url = pg_engine.url.render_as_string(hide_password=False)
    await pg_engine.dispose()
    refused = central_cli(url, tmp_path, "db", "downgrade", "1503", "--drop-records", exit_code=1)
    assert "apply-backlog" in refused["error"]
    assert central_cli(url, tmp_path, "reports", "apply-backlog")["applied"] == 2
    assert (
        central_cli(url, tmp_path, "db", "downgrade", "1503", "--drop-records")["downgraded_to"]
        == "1503"
    )
    async with pg_engine.connect() as connection:
        sold = await connection.scalar(text("SELECT sum(qty_milli) FROM rpt_sales_product_daily"))
    assert sold == 1_000


async def test_1711_backfills_withdrawal_moments_and_branch_scopes(db_url: str) -> None:
    """Upgrading to 1711: an override withdrawn before it gets the moment of the audit
    log's first price.withdraw of its key after its creation (none: left empty, it
    counts at no moment as before); each branch its current scopes from registration."""
    engine = create_engine(db_url)
    try:
        await downgrade(db_url, "1709", drop_records=True)
        created = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        withdrawn = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO branches (code, name, timezone, format_code, price_zone, "
                    "active, created_at) VALUES ('B2', 'B2', 'UTC', NULL, 'south', true, :at)"
                ),
                {"at": created},
            )
            for sku, price, at in (("MILK", 99, created), ("SALT", 10, created)):
                await connection.execute(
                    text(
                        "INSERT INTO price_entries (scope, scope_id, sku, bucket, price, "
                        "effective_at, version, withdrawn, created_at) VALUES "
                        "('branch', 'B2', :sku, 1, :price, :at, 1, true, :at)"
                    ),
                    {"sku": sku, "price": price, "at": at},
                )
            # An earlier withdrawal of MILK (before this entry existed) and its own.
            for at in (created - timedelta(days=5), withdrawn, withdrawn + timedelta(days=1)):
                await connection.execute(
                    text(
                        "INSERT INTO audit_log (at, actor, actor_role, method, path, action, "
                        "target) VALUES (:at, 'mia', 'admin', 'POST', '/', 'price.withdraw', "
                        "'price:MILK@branch:B2')"
                    ),
                    {"at": at},
                )
        await engine.dispose()
        await upgrade(db_url)
        async with create_sessionmaker(engine)() as session:
            moments = dict(
                (await session.execute(select(PriceEntryRow.sku, PriceEntryRow.withdrawn_at))).all()
            )
            history = (
                await session.execute(
                    select(
                        BranchScopeHistory.branch,
                        BranchScopeHistory.valid_from,
                        BranchScopeHistory.format_code,
                        BranchScopeHistory.price_zone,
                    ).where(BranchScopeHistory.branch == "B2")
                )
            ).all()
        assert moments == {"MILK": withdrawn, "SALT": None}
        assert [tuple(r) for r in history] == [("B2", created, None, "south")]
    finally:
        await engine.dispose()


async def test_1715_counts_the_stock_of_approved_repricing_lines_as_revalued(
    db_url: str,
) -> None:
    """Upgrading to 1715: a line approved before revalued its whole stock, so it is all
    revalued (its figures kept); a draft's line waits for its approval."""
    engine = create_engine(db_url)
    try:
        await downgrade(db_url, "1711", drop_records=True)
        at = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        async with engine.begin() as connection:
            for doc_id, status in ((1, "approved"), (2, "draft")):
                await connection.execute(
                    text(
                        "INSERT INTO repricing_documents (id, status, scope, scope_id, "
                        "effective_at, note, created_at) VALUES (:id, :status, 'all', '', "
                        ":at, '', :at)"
                    ),
                    {"id": doc_id, "status": status, "at": at},
                )
                await connection.execute(
                    text(
                        "INSERT INTO repricing_lines (document_id, sku, new_price, old_price, "
                        "stock_milli, old_value, new_value) VALUES (:id, 'MILK', 129, 119, "
                        "10000, 1190, 1290)"
                    ),
                    {"id": doc_id},
                )
        await engine.dispose()
        await upgrade(db_url)
        async with create_sessionmaker(engine)() as session:
            rows = (
                await session.execute(
                    select(
                        RepricingLine.document_id,
                        RepricingLine.revalued_stock_milli,
                        RepricingLine.old_value,
                        RepricingLine.new_value,
                        RepricingLine.unpriced_stock_milli,
                    ).order_by(RepricingLine.document_id)
                )
            ).all()
        assert [tuple(r) for r in rows] == [(1, 10_000, 1190, 1290, 0), (2, 0, 1190, 1290, 0)]
    finally:
        await engine.dispose()
