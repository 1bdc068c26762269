"""Central's composition root: ``create_app(settings)`` builds the Litestar app."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.audit import AuditController
from central.api.branches import BranchController
from central.api.branches_sync import BranchSyncController
from central.api.dead_letters import DeadLetterController
from central.api.documents import CustomerReturnController, DocumentController
from central.api.fiscal import FiscalInterventionController
from central.api.health import HealthController
from central.api.masterdata import MASTER_DATA_CONTROLLERS
from central.api.openapi_problems import ProblemResponses
from central.api.problems import exception_handlers
from central.api.receipts import ReceiptController
from central.api.reports import ReportController
from central.api.shifts import ShiftController
from central.api.stock import StockController
from central.api.strict_schema import StrictStructSchemaPlugin
from central.api.users import UserController
from central.auth import ApiAuthMiddleware, authorize
from central.auth.limits import bounded_path_ints, text_without_nul
from central.runtime import CentralRuntime
from central.settings import CentralSettings
from protocol.http_body import StrictBodyRule
from protocol.http_query import QueryParameterRule

__all__ = ["create_app"]


def create_app(settings: CentralSettings, *, runtime: CentralRuntime | None = None) -> Litestar:
    """The head-office web app. Without a ``runtime`` it makes and owns one."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncGenerator[None, None]:
        own = runtime is None
        rt = runtime or CentralRuntime(settings)
        app.state.runtime = rt
        if own:
            await rt.start(ingest_workers=1 if settings.ingest_in_process else 0)
        try:
            yield
        finally:
            if own:
                await rt.stop()

    return Litestar(
        route_handlers=[
            HealthController,
            ReceiptController,
            DeadLetterController,
            ReportController,
            UserController,
            AuditController,
            BranchController,
            *MASTER_DATA_CONTROLLERS,
            StockController,
            DocumentController,
            CustomerReturnController,
            ShiftController,
            FiscalInterventionController,
            BranchSyncController,
        ],
        # Every route: a bearer token (401), then the role its group requires (403);
        # see central/auth/roles.py and README "Security".
        middleware=[ApiAuthMiddleware()],
        guards=[authorize, bounded_path_ints, text_without_nul],
        dependencies={
            "runtime": Provide(_provide_runtime, sync_to_thread=False),
            "db_session": Provide(_provide_session),
        },
        lifespan=[lifespan],
        # With a runtime given (tests, embedding) the app works without its lifespan too.
        state=State({"runtime": runtime}) if runtime is not None else None,
        exception_handlers=exception_handlers,
        # Before Litestar's own Struct plugin: bodies that refuse unknown fields say so.
        # QueryParameterRule: a query parameter the route does not declare, or a
        # single-valued one given twice, is a 400 problem naming it (after the guards).
        # StrictBodyRule: a number or boolean sent as text is a 422 naming it.
        # ProblemResponses: each operation's OpenAPI entry lists the problems it answers.
        plugins=[
            StrictStructSchemaPlugin(),
            QueryParameterRule(),
            StrictBodyRule(),
            ProblemResponses(),
        ],
        request_max_body_size=settings.max_request_body,
        openapi_config=OpenAPIConfig(
            title="Backroom head office API",
            version="1.0.0",
            description="Assortment, prices and the consolidated records of every branch.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
        debug=False,
    )


def _provide_runtime(state: State) -> CentralRuntime:
    runtime: CentralRuntime = state.runtime
    return runtime


async def _provide_session(state: State) -> AsyncGenerator[AsyncSession, None]:
    """One session per request; write routes commit inside their service's unit of work."""
    runtime: CentralRuntime = state.runtime
    async with runtime.sessionmaker() as session:
        yield session
