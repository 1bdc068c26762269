"""``export prices`` writes the prices in force now, one row per product and scope, in
the import's columns and without moments, so a buyer can edit it and load it back;
``--history`` (``history=True``) keeps every entry, as before."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from central.db import create_engine, create_sessionmaker
from central.services.branches import add_branch
from central.services.catalog import ProductIn, create_product
from central.services.catalog_import import export_prices_csv, import_prices
from central.services.pricing import (
    PriceChangeIn,
    PriceZoneIn,
    create_price_zone,
    set_price,
    withdraw_override,
)


def _rows(text: str) -> list[tuple[str, ...]]:
    return [tuple(r) for r in csv.reader(io.StringIO(text))]


async def test_current_prices_export_edit_and_import_back(db_url: str) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        async with sm() as s:
            await create_price_zone(s, PriceZoneIn(code="north", name="North"))
            await s.commit()
        async with sm() as s:
            await add_branch(s, code="B1", name="One", timezone="UTC", price_zone="north")
            await add_branch(s, code="B2", name="Two", timezone="UTC")
            for sku in ("MILK", "BREAD"):
                await create_product(s, ProductIn(sku=sku, name=sku, vat_rate_bp=1000))
            await s.commit()
        later = datetime.now(UTC) + timedelta(days=3)
        for change in (
            PriceChangeIn(sku="MILK", price=109),
            PriceChangeIn(sku="MILK", price=119),  # supersedes 1.09
            PriceChangeIn(sku="MILK", price=115, scope="zone", scope_id="north"),
            PriceChangeIn(sku="MILK", price=99, scope="branch", scope_id="B2"),
            PriceChangeIn(sku="BREAD", price=259),
            PriceChangeIn(sku="BREAD", price=279, effective_at=later),  # scheduled
        ):
            async with sm() as s:
                await set_price(s, change)
                await s.commit()
        async with sm() as s:
            await withdraw_override(s, scope="branch", scope_id="B2", sku="MILK")
            await s.commit()
        async with sm() as s:
            current = await export_prices_csv(s)
            history = await export_prices_csv(s, history=True)
        header = ("sku", "price", "scope", "scope_id", "effective_at", "effective_local")
        assert _rows(current) == [
            header,
            ("BREAD", "2.59", "all", "", "", ""),
            ("MILK", "1.19", "all", "", "", ""),
            ("MILK", "1.15", "zone", "north", "", ""),
        ]
        # The history keeps the superseded and the scheduled entries, with moments.
        assert len(_rows(history)) == 1 + 5
        # The buyer edits the exported list and loads it back.
        edited = current.replace("MILK,1.19,all", "MILK,1.25,all")
        async with sm() as s:
            report = await import_prices(s, io.StringIO(edited), dry_run=False)
        assert report.error_count == 0, report.errors
        assert report.applied
        async with sm() as s:
            after = await export_prices_csv(s)
        assert _rows(after) == [
            header,
            ("BREAD", "2.59", "all", "", "", ""),
            ("MILK", "1.25", "all", "", "", ""),
            ("MILK", "1.15", "zone", "north", "", ""),
        ]
    finally:
        await engine.dispose()
