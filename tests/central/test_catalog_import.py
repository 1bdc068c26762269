"""CSV import (dry run reports every bad row, apply is all-or-nothing) and the
publication outbox surviving a NATS outage between commit and publish."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from central.db import create_engine, create_sessionmaker
from central.embedded_nats import EmbeddedNats
from central.models import PriceEntryRow, Product
from central.services.branches import add_branch
from central.services.catalog import CategoryIn, ProductIn, create_category, create_product
from central.services.catalog_import import (
    export_prices_csv,
    export_products_csv,
    import_prices,
    import_products,
)
from central.services.masterdata_publisher import (
    MasterDataPublisher,
    current_version,
    published_version,
)
from central.services.pricing import PriceChangeIn, set_price
from central.sync.jetstream import connect, ensure_streams
from protocol.masterdata import PriceBucket, bucket_key, bucket_of, decode_masterdata
from protocol.subjects import DOWN_STREAM, down_subject

PRODUCTS = """sku,name,unit,weighed,scale_plu,barcodes,category,vat_rate_bp,vat_group,active
MILK,Milk 1L,pcs,false,,4006381333931|INT-1,dairy,1000,B,true
APPLE,Apples,kg,true,42,,,1000,B,true
"""

BAD = """sku,name,unit,weighed,scale_plu,barcodes,category,vat_rate_bp,vat_group,active
OK1,Fine,pcs,false,,,,1000,A,true
,No sku,pcs,false,,,,1000,A,true
BAD-EAN,Bad,pcs,false,,4006381333932,,1000,A,true
BAD-CAT,Bad,pcs,false,,,nope,1000,A,true
BAD-VAT,Bad,pcs,false,,,,x,A,true
OK1,Again,pcs,false,,,,1000,A,true
BAD-PLU,Bad,kg,true,999999,,,1000,A,true
"""


async def test_products_and_prices_import_export(db_url: str) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s:
            await create_category(s, CategoryIn(code="dairy", name="Dairy"))
            await s.commit()
        async with sm() as s:
            report = await import_products(s, io.StringIO(BAD), dry_run=True)
        assert report.error_count == 6
        assert [(e.line, e.field) for e in report.errors] == [
            (3, "sku"),
            (4, "barcodes"),
            (5, "category"),
            (6, "vat_rate_bp"),
            (7, "sku"),
            (8, "scale_plu"),
        ]
        # Not applied even without --dry-run: the file is taken whole or not at all.
        async with sm() as s:
            report = await import_products(s, io.StringIO(BAD), dry_run=False)
            assert not report.applied
            assert await s.scalar(select(func.count()).select_from(Product)) == 0
        async with sm() as s:
            report = await import_products(s, io.StringIO(PRODUCTS), dry_run=False)
        assert report.applied
        assert report.created == 2
        async with sm() as s:
            exported = await export_products_csv(s)
        assert "MILK,Milk 1L,pcs,false,,4006381333931|INT-1,dairy,1000,B,true" in exported
        prices = "sku,price,scope,scope_id\nMILK,1.19,all,\nAPPLE,2.99,,\nNOPE,1.00,,\nMILK,-1.00,,\nMILK,1.999,,\nAPPLE,0.00,,\n"
        async with sm() as s:
            report = await import_prices(s, io.StringIO(prices), dry_run=True)
        assert [(e.line, e.field) for e in report.errors] == [
            (4, "sku"),
            (5, "price"),
            (6, "price"),
            (7, "price"),
        ]
        good = "sku,price\nMILK,1.19\nAPPLE,2.99\n"
        async with sm() as s:
            report = await import_prices(s, io.StringIO(good), dry_run=False)
        assert report.applied
        async with sm() as s:
            assert await s.scalar(select(func.count()).select_from(PriceEntryRow)) == 2
            assert "MILK,1.19,all," in await export_prices_csv(s)
    finally:
        await engine.dispose()


async def test_changes_committed_while_nats_is_down_are_published_later(
    db_url: str, nats_server: EmbeddedNats
) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    nc = await connect(nats_server.url, name="test-publisher")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        publisher = MasterDataPublisher(sm, ack_timeout_s=1.0)
        async with sm() as s:
            await create_product(s, ProductIn(sku="MILK", name="Milk", vat_rate_bp=1000))
            await s.commit()
        nats_server.stop()
        async with sm() as s:
            await set_price(s, PriceChangeIn(sku="MILK", price=119))
            await s.commit()
        with pytest.raises(Exception):  # noqa: B017, PT011 - timeout or no responders
            await asyncio.wait_for(publisher.publish_pending(js), 5)
        async with sm() as s:
            assert await published_version(s) < await current_version(s)
        nats_server.start()
        for _ in range(100):
            try:
                if await publisher.publish_pending(js) == 0:
                    break
            except Exception:
                await asyncio.sleep(0.2)
        async with sm() as s:
            assert await published_version(s) == await current_version(s)
        subject = down_subject("all", None, "price", bucket_key(bucket_of("MILK")))
        last = await js.get_last_msg(DOWN_STREAM, subject)
        message = decode_masterdata(last.data)
        assert isinstance(message, PriceBucket)
        assert [(e.sku, e.price) for e in message.entries] == [("MILK", 119)]
    finally:
        await nc.close()
        await engine.dispose()


async def test_the_dry_run_refuses_every_row_the_apply_would(db_url: str) -> None:
    """Moments are checked as the apply checks them (pricing.effective_moment): a local
    time already past in some reached branch's zone, both effective_at and
    effective_local, a moment without a zone: each reported with its line, by the dry
    run and by the real import (which then applies nothing)."""
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s:
            await add_branch(s, code="EAST", name="East", timezone="Pacific/Kiritimati")
            await add_branch(s, code="WEST", name="West", timezone="Pacific/Pago_Pago")
            await create_category(s, CategoryIn(code="dairy", name="Dairy"))
            await s.commit()
        async with sm() as s:
            report = await import_products(s, io.StringIO(PRODUCTS), dry_run=False)
        assert report.applied
        now = datetime.now(UTC)
        # In two hours' UTC wall-clock time: still to come at WEST (UTC-11), long past
        # at EAST (UTC+14).
        soon = (now + timedelta(hours=2)).replace(tzinfo=None, microsecond=0).isoformat()
        later = (now + timedelta(days=2)).replace(microsecond=0)
        prices = (
            "sku,price,scope,scope_id,effective_at,effective_local\n"
            "MILK,1.19,all,,,\n"
            f"APPLE,2.99,branch,WEST,,{soon}\n"
            f"MILK,1.29,all,,,{soon}\n"
            f"APPLE,2.49,all,,{later.isoformat()},{later.replace(tzinfo=None).isoformat()}\n"
            f"MILK,1.09,branch,EAST,{later.replace(tzinfo=None).isoformat()},\n"
        )
        expected = [(4, "effective_local"), (5, "effective_local"), (6, "effective_at")]
        for dry_run in (True, False):
            async with sm() as s:
                report = await import_prices(s, io.StringIO(prices), dry_run=dry_run)
            assert [(e.line, e.field) for e in report.errors] == expected, report.errors
            assert not report.applied
        async with sm() as s:
            assert await s.scalar(select(func.count()).select_from(PriceEntryRow)) == 0
    finally:
        await engine.dispose()
