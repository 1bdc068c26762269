"""Head-office reports under /api/v1/reports: JSON, or CSV with ``?format=csv`` or
``Accept: text/csv``. Every route is one call into ``central.reports.service``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from central.db import limit_statement_time
from central.errors import ValidationFailed
from central.reports import service
from central.reports.csv_out import report_csv, report_filename
from central.reports.schemas import (
    AbcReport,
    LossPreventionReport,
    MarginReport,
    SalesReport,
    ShiftReconciliationReport,
    ShrinkageReport,
    StockMovementReport,
    StockOnHandReport,
    SyncHealthReport,
    WriteOffReport,
)
from central.settings import CentralSettings

__all__ = ["ReportController"]

# Required: the schema says so, and a missing one is a 422 naming it.
DateFrom = Annotated[
    date, QueryParameter(name="date_from", description="First local day, inclusive")
]
DateTo = Annotated[date, QueryParameter(name="date_to", description="Last local day, inclusive")]
BranchParam = Annotated[
    str | None, QueryParameter(name="branch", description="Branch code; all branches if absent")
]
FormatParam = Annotated[
    str | None,
    QueryParameter(name="format", description="json (default) or csv; Accept: text/csv works too"),
]


# The units of every report, which no field of the schema could say.
UNITS = (
    "Money in integer minor units (cents: 129 is 1.29); quantities in integer thousandths "
    "of each product's own unit (`*_milli`: 7754 is 7.754; a quantity summed over several "
    "products adds pieces, kilograms and litres alike); percentages as decimal text with "
    "two places. Periods are the branches' local days, both ends inclusive. The CSV "
    "(`format=csv` or `Accept: text/csv`) has the rows only, money and quantities as "
    "exact decimal text, a `*_milli` field in a column named without the suffix, `_qty` "
    "added where the name has none (`qty_milli`: `qty`, `opening_milli`: `opening_qty`)."
)


@dataclass
class _JsonOrCsv(Operation):
    """A report's operation: its 200 is the JSON report or, with ``format=csv`` or
    ``Accept: text/csv``, the rows as a CSV download; the document said JSON only, and
    named no unit."""

    def __post_init__(self) -> None:
        self.description = f"{self.description}\n\n{UNITS}" if self.description else UNITS
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                "text/csv": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        description="The rows, one line each, with a header line; money "
                        "and quantities as exact decimal text (30.65, 7.754)",
                    )
                ),
            }


def _wants_csv(request: Request[Any, Any, Any], fmt: str | None) -> bool:
    if fmt is not None:
        if fmt not in ("json", "csv"):
            raise ValidationFailed("format must be json or csv", field="format")
        return fmt == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _respond(request: Request[Any, Any, Any], fmt: str | None, report: Any, name: str) -> Any:
    """The report itself (JSON), or its rows as a CSV download."""
    if not _wants_csv(request, fmt):
        return report
    return Response(
        content=report_csv(report),
        # Litestar adds "; charset=utf-8" to a text/* type itself (twice if named here).
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{report_filename(report, name)}"'},
    )


async def _report_session(state: State) -> AsyncGenerator[AsyncSession, None]:
    """A report's session: each of its statements may run ``report_statement_timeout_s``
    (PostgreSQL; longer, a 503 problem), so one report cannot hold the database."""
    runtime = state.runtime
    async with runtime.sessionmaker() as session:
        await limit_statement_time(session, runtime.settings.report_statement_timeout_s)
        yield session


def _settings(request: Request[Any, Any, Any]) -> CentralSettings:
    settings: CentralSettings = request.app.state.runtime.settings
    return settings


def _max_span(request: Request[Any, Any, Any]) -> int:
    return _settings(request).report_max_span_days


def _max_rows(request: Request[Any, Any, Any]) -> int:
    """Most rows of one report (more: a 422 problem naming the parameter to narrow)."""
    return _settings(request).report_max_rows


class ReportController(Controller):
    path = "/api/v1/reports"
    tags = ["reports"]
    dependencies = {"db_session": Provide(_report_session)}

    @get(
        "/sales",
        operation_class=_JsonOrCsv,
        operation_id="salesReport",
        summary="Sales by branch, day, hour, cashier, product, category or payment type",
    )
    async def sales(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        group_by: Annotated[
            str | None,
            QueryParameter(
                name="group_by",
                description="Comma-separated: branch, day and at most one of hour, cashier, "
                "product, category, payment_type (default branch)",
            ),
        ] = None,
        compare: Annotated[
            bool, QueryParameter(name="compare", description="Add the previous period")
        ] = True,
        fmt: FormatParam = None,
    ) -> SalesReport:
        report = await service.sales_report(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            group_by=group_by,
            compare=compare,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: SalesReport = _respond(request, fmt, report, "sales")
        return result

    @get(
        "/stock-on-hand",
        operation_class=_JsonOrCsv,
        operation_id="stockOnHandReport",
        summary="Stock on hand by branch and product, at cost and at retail (head office's "
        "price in force, else the last selling price)",
    )
    async def stock_on_hand(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        branch: BranchParam = None,
        sku: Annotated[str | None, QueryParameter(name="sku")] = None,
        group_by: Annotated[
            str | None,
            QueryParameter(
                name="group_by", description="branch,product (default), branch or product"
            ),
        ] = None,
        fmt: FormatParam = None,
    ) -> StockOnHandReport:
        report = await service.stock_on_hand(
            db_session, branch=branch, group_by=group_by, sku=sku, max_rows=_max_rows(request)
        )
        result: StockOnHandReport = _respond(request, fmt, report, "stock-on-hand")
        return result

    @get(
        "/stock-movement",
        operation_class=_JsonOrCsv,
        operation_id="stockMovementReport",
        summary="Opening, receipts, transfers, sales, returns, write-offs, stocktakes, closing",
    )
    async def stock_movement(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        sku: Annotated[str | None, QueryParameter(name="sku")] = None,
        group_by: Annotated[
            str | None,
            QueryParameter(
                name="group_by",
                description="product (default with a branch), branch (default without), or both",
            ),
        ] = None,
        fmt: FormatParam = None,
    ) -> StockMovementReport:
        report = await service.stock_movement(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            group_by=group_by,
            sku=sku,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: StockMovementReport = _respond(request, fmt, report, "stock-movement")
        return result

    @get(
        "/gross-margin",
        operation_class=_JsonOrCsv,
        operation_id="grossMarginReport",
        summary="Net sales minus cost of goods sold (moving average) by branch, category, product",
    )
    async def gross_margin(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        group_by: Annotated[
            str | None,
            QueryParameter(name="group_by", description="branch (default), category, product"),
        ] = None,
        fmt: FormatParam = None,
    ) -> MarginReport:
        report = await service.gross_margin(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            group_by=group_by,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: MarginReport = _respond(request, fmt, report, "gross-margin")
        return result

    @get(
        "/abc",
        operation_class=_JsonOrCsv,
        operation_id="abcReport",
        summary="ABC analysis of products by revenue or margin, per branch or chain",
    )
    async def abc(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        measure: Annotated[
            str, QueryParameter(name="measure", description="revenue (default) or margin")
        ] = "revenue",
        a_pct: Annotated[int, QueryParameter(name="a_pct", description="Share of class A")] = 80,
        b_pct: Annotated[
            int, QueryParameter(name="b_pct", description="Share of classes A and B")
        ] = 95,
        fmt: FormatParam = None,
    ) -> AbcReport:
        report = await service.abc_analysis(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            measure=measure,
            a_pct=a_pct,
            b_pct=b_pct,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: AbcReport = _respond(request, fmt, report, "abc")
        return result

    @get(
        "/write-offs",
        operation_class=_JsonOrCsv,
        operation_id="writeOffReport",
        summary="Write-offs by reason",
    )
    async def write_offs(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        group_by: Annotated[
            str | None,
            QueryParameter(name="group_by", description="reason (default), branch, product"),
        ] = None,
        fmt: FormatParam = None,
    ) -> WriteOffReport:
        report = await service.write_offs(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            group_by=group_by,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: WriteOffReport = _respond(request, fmt, report, "write-offs")
        return result

    @get(
        "/shrinkage",
        operation_class=_JsonOrCsv,
        operation_id="shrinkageReport",
        summary="Stocktake differences",
    )
    async def shrinkage(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        group_by: Annotated[
            str | None, QueryParameter(name="group_by", description="branch (default), product")
        ] = None,
        fmt: FormatParam = None,
    ) -> ShrinkageReport:
        report = await service.shrinkage(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            group_by=group_by,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: ShrinkageReport = _respond(request, fmt, report, "shrinkage")
        return result

    @get(
        "/shifts",
        operation_class=_JsonOrCsv,
        operation_id="shiftReconciliationReport",
        summary="Per shift: Z totals and the till's closing beside the recorded receipts",
    )
    async def shifts(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        only_differences: Annotated[
            bool, QueryParameter(name="only_differences", description="Only shifts that differ")
        ] = False,
        fmt: FormatParam = None,
    ) -> ShiftReconciliationReport:
        report = await service.shift_reconciliation(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            only_differences=only_differences,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: ShiftReconciliationReport = _respond(request, fmt, report, "shifts")
        return result

    @get(
        "/loss-prevention",
        operation_class=_JsonOrCsv,
        operation_id="lossPreventionReport",
        summary="Cashiers with unusual rates of voids, returns or manual discounts",
    )
    async def loss_prevention(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        date_from: DateFrom,
        date_to: DateTo,
        branch: BranchParam = None,
        factor: Annotated[
            int, QueryParameter(name="factor", description="Flag at this multiple of the median")
        ] = 3,
        min_count: Annotated[
            int, QueryParameter(name="min_count", description="Fewer events are never flagged")
        ] = 3,
        fmt: FormatParam = None,
    ) -> LossPreventionReport:
        report = await service.loss_prevention(
            db_session,
            date_from=date_from,
            date_to=date_to,
            branch=branch,
            factor=factor,
            min_count=min_count,
            max_span_days=_max_span(request),
            max_rows=_max_rows(request),
        )
        result: LossPreventionReport = _respond(request, fmt, report, "loss-prevention")
        return result

    @get(
        "/sync-health",
        operation_class=_JsonOrCsv,
        operation_id="syncHealthReport",
        summary="Per branch: last event, lag, outbox backlog, applied version, dead letters",
    )
    async def sync_health(
        self,
        request: Request[Any, Any, Any],
        db_session: NamedDependency[AsyncSession],
        fmt: FormatParam = None,
    ) -> SyncHealthReport:
        # One row per branch: not capped (see service.sync_health).
        report = await service.sync_health(db_session)
        result: SyncHealthReport = _respond(request, fmt, report, "sync-health")
        return result
