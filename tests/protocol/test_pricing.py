"""The shared price resolution and promotion rules (central and agents use these)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.masterdata import (
    BUCKETS,
    PriceBucket,
    PriceEntry,
    PromotionRecord,
    bucket_key,
    bucket_of,
    decode_masterdata,
    encode_masterdata,
    parse_bucket_key,
    validate_barcode,
)
from protocol.pricing import (
    PriceCandidate,
    branch_scopes,
    entry_moment,
    local_to_utc,
    prune_schedule,
    resolve_price,
)
from protocol.promotions import PromoLine, evaluate_promotions

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def c(scope: str, price: int, minutes: int = 0, version: int = 1) -> PriceCandidate:
    return PriceCandidate(scope, price, T0 + timedelta(minutes=minutes), version)


def test_most_specific_scope_in_force_wins() -> None:
    entries = [c("all", 100), c("zone", 90), c("branch", 80, minutes=60)]
    assert resolve_price(entries, T0)
    assert resolve_price(entries, T0).price == 90  # type: ignore[union-attr]
    # The branch override only once its moment has come.
    assert resolve_price(entries, T0 + timedelta(minutes=59)).price == 90  # type: ignore[union-attr]
    assert resolve_price(entries, T0 + timedelta(minutes=60)).price == 80  # type: ignore[union-attr]


def test_scheduled_change_within_a_scope_and_version_tie_break() -> None:
    entries = [c("all", 100, 0, 1), c("all", 120, 30, 2), c("all", 130, 30, 3)]
    assert resolve_price(entries, T0 + timedelta(minutes=29)).price == 100  # type: ignore[union-attr]
    assert resolve_price(entries, T0 + timedelta(minutes=30)).price == 130  # type: ignore[union-attr]
    assert resolve_price(entries, T0 - timedelta(seconds=1)) is None


def test_naive_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        resolve_price([c("all", 1)], datetime(2026, 1, 1))


scopes = st.sampled_from(["all", "format", "zone", "branch"])
candidates = st.lists(
    st.builds(
        PriceCandidate,
        scope=scopes,
        price=st.integers(0, 10**6),
        effective_at=st.integers(-1000, 1000).map(lambda m: T0 + timedelta(minutes=m)),
        version=st.integers(0, 50),
    ),
    max_size=12,
)


@given(candidates, st.integers(-1200, 1200))
def test_resolution_is_order_independent_and_never_in_the_future(
    entries: list[PriceCandidate], minute: int
) -> None:
    at = T0 + timedelta(minutes=minute)
    got = resolve_price(entries, at)
    assert got == resolve_price(list(reversed(entries)), at)
    in_force = [e for e in entries if e.effective_at <= at]
    if not in_force:
        assert got is None
        return
    assert got is not None
    assert got.effective_at <= at
    rank = {"all": 0, "format": 1, "zone": 2, "branch": 3}
    assert rank[got.scope] == max(rank[e.scope] for e in in_force)


@given(candidates, st.integers(-1200, 1200), st.integers(0, 1200))
def test_pruning_keeps_every_answer_from_now_on(
    entries: list[PriceCandidate], now_minute: int, later: int
) -> None:
    now = T0 + timedelta(minutes=now_minute)
    for scope in ("all", "zone"):
        same = [e for e in entries if e.scope == scope]
        pruned = prune_schedule(same, now)
        at = now + timedelta(minutes=later)
        before, after = resolve_price(same, at), resolve_price(pruned, at)
        assert (before.price if before else None) == (after.price if after else None)


def test_branch_scopes() -> None:
    assert branch_scopes("B1", "mini", "north") == [
        ("all", None),
        ("format", "mini"),
        ("zone", "north"),
        ("branch", "B1"),
    ]
    assert branch_scopes("B1", None, None) == [("all", None), ("branch", "B1")]


def test_local_time_to_utc_with_dst() -> None:
    # Berlin winter: UTC+1; summer: UTC+2.
    assert local_to_utc(datetime(2026, 1, 10, 6, 0), "Europe/Berlin") == datetime(
        2026, 1, 10, 5, 0, tzinfo=UTC
    )
    assert local_to_utc(datetime(2026, 7, 10, 6, 0), "Europe/Berlin") == datetime(
        2026, 7, 10, 4, 0, tzinfo=UTC
    )
    # 02:30 does not exist on 29 March 2026 in Berlin: it lands 30 min after the gap.
    assert local_to_utc(datetime(2026, 3, 29, 2, 30), "Europe/Berlin") == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("4006381333931", "ean13"),
        ("96385074", "ean8"),
        ("036000291452", "upca"),
        ("INT-0042", "internal"),
    ],
)
def test_valid_barcodes(code: str, kind: str) -> None:
    assert validate_barcode(code) == kind


@pytest.mark.parametrize("code", ["4006381333932", "96385075", "036000291453", "", "a b", "é1"])
def test_bad_barcodes(code: str) -> None:
    with pytest.raises(ValueError, match="barcode"):
        validate_barcode(code)


def test_declared_kind_must_match() -> None:
    with pytest.raises(ValueError, match="ean13"):
        validate_barcode("96385074", "ean13")
    assert validate_barcode("4006381333932", "internal") == "internal"


@given(st.text(min_size=1, max_size=20))
def test_buckets_are_stable_and_in_range(sku: str) -> None:
    b = bucket_of(sku)
    assert 0 <= b < BUCKETS
    assert parse_bucket_key(bucket_key(b)) == b


def test_bucket_of_is_crc32_based() -> None:
    # Fixed values: central and every agent must agree on them forever.
    assert bucket_of("MILK-1L") == bucket_of("MILK-1L")
    assert [bucket_of(s) for s in ("A", "B", "SKU-1")] == [139, 49, 180]


def test_wire_roundtrip_and_garbage() -> None:
    msg = PriceBucket(
        scope="zone",
        scope_id="north",
        bucket=3,
        version=7,
        entries=(PriceEntry(sku="X", price=199, effective_at=T0, version=7),),
    )
    assert decode_masterdata(encode_masterdata(msg)) == msg
    with pytest.raises(ValueError, match=r"."):
        decode_masterdata(b"\x01garbage")


def promo(pid: str, **kw: object) -> PromotionRecord:
    return PromotionRecord(promotion_id=pid, version=1, **kw)  # type: ignore[arg-type]


def line(sku: str, qty: int, price: int, cats: tuple[str, ...] = ()) -> PromoLine:
    from protocol.units import line_amount

    return PromoLine(
        sku=sku,
        quantity_milli=qty,
        unit_price=price,
        gross=line_amount(price, qty),
        category_path=cats,
    )


def test_percent_amount_and_category_promotions() -> None:
    promos = [
        promo("P1", type="percent", percent_bp=1000, skus=("A",)),
        promo("P2", type="amount", amount=50, categories=("dairy",)),
    ]
    lines = [line("A", 1000, 199), line("C", 754, 1290, ("food", "dairy")), line("Z", 1000, 5)]
    got = evaluate_promotions(promos, lines, T0)
    # 10 % of 1.99 = 0.199 -> 0.20 half-up; 0.50/kg x 0.754 kg = 0.377 -> 0.38.
    assert [(r.amount, r.promotion_id) for r in got] == [(20, "P1"), (38, "P2"), (0, None)]


def test_a_discount_is_never_more_than_the_line_nor_negative() -> None:
    """An amount off above the price (central refuses it now, an agent may hold an older
    one) takes the line to zero, never below; a malformed negative one is no surcharge."""
    lines = [line("A", 2000, 129), line("W", 500, 129)]
    got = evaluate_promotions(
        [promo("BIG", type="amount", amount=100_000, skus=("A", "W"))], lines, T0
    )
    assert [r.amount for r in got] == [258, 65]
    for bad in (
        promo("NEG", type="amount", amount=-50, skus=("A", "W")),
        promo("NEGP", type="percent", percent_bp=-1000, skus=("A", "W")),
    ):
        assert [r.amount for r in evaluate_promotions([bad], lines, T0)] == [0, 0]


def test_n_for_m_takes_cheapest_and_ignores_fractions() -> None:
    p = promo("3for2", type="n_for_m", n=3, m=2, skus=("A", "W"))
    got = evaluate_promotions([p], [line("A", 2000, 100), line("A", 1000, 100)], T0)
    assert [r.amount for r in got] == [100, 0]
    got = evaluate_promotions([p], [line("A", 5000, 100)], T0)
    assert got[0].amount == 100  # 5 pieces: one free
    got = evaluate_promotions([p], [line("W", 3500, 100)], T0)
    assert got[0].amount == 0


def test_time_window_and_tie_break() -> None:
    p1 = promo(
        "B", type="amount", amount=10, skus=("A",), starts_at=T0, ends_at=T0 + timedelta(hours=1)
    )
    p2 = promo("A", type="amount", amount=10, skus=("A",))
    p3 = promo("C", type="amount", amount=30, skus=("A",), deleted=True)
    lines = [line("A", 1000, 100)]
    assert evaluate_promotions([p1, p2, p3], lines, T0)[0].promotion_id == "A"
    assert evaluate_promotions([p1], lines, T0 - timedelta(seconds=1))[0].amount == 0
    assert evaluate_promotions([p1], lines, T0 + timedelta(hours=1))[0].amount == 0


@given(
    st.lists(
        st.tuples(st.sampled_from("ABC"), st.integers(1, 9000), st.integers(0, 5000)), max_size=8
    ),
    st.integers(0, 10000),
    st.integers(0, 3000),
)
def test_discount_never_exceeds_gross(
    raw: list[tuple[str, int, int]], bp: int, amount: int
) -> None:
    lines = [line(s, q, p) for s, q, p in raw]
    promos = [
        promo("P", type="percent", percent_bp=bp, skus=("A",)),
        promo("Q", type="amount", amount=amount, skus=("B", "A")),
        promo("R", type="n_for_m", n=2, m=1, skus=("C", "B")),
    ]
    results = evaluate_promotions(promos, lines, T0)
    assert len(results) == len(lines)
    for ln, r in zip(lines, results, strict=True):
        assert 0 <= r.amount <= ln.gross
        assert (r.amount == 0) == (r.promotion_id is None) or r.amount == 0


def test_a_wall_clock_entry_never_takes_effect_before_its_utc_moment() -> None:
    """A local-time entry approved after some zones' local moment: those zones take it
    at approval (its effective_at), the others at their own local time."""
    approved = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)  # 09:00 in Tokyo, 01:00 in Berlin
    assert entry_moment(approved, "2026-12-01T06:00:00", "Asia/Tokyo") == approved
    assert entry_moment(approved, "2026-12-01T06:00:00", "Europe/Berlin") == datetime(
        2026, 12, 1, 5, 0, tzinfo=UTC
    )
    assert entry_moment(approved, None, "Asia/Tokyo") == approved
