"""The till API: HTTP on the store LAN; every till authenticates with its own token."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import msgspec
from litestar import Controller, Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi import OpenAPIConfig
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.types import ExceptionHandlersMap

from branch_agent.errors import AgentError, Forbidden
from branch_agent.restored import RecordedAgainOut
from branch_agent.sales import is_storage_failure, is_storage_full
from branch_agent.schemas import (
    CashMoveIn,
    CashMoveOut,
    FiscalInterventionOut,
    ProductOut,
    RecordedAgainSettleIn,
    ReturnIn,
    ReturnOut,
    SaleIn,
    SaleOut,
    SettleIn,
    SettleOut,
    ShiftCloseIn,
    ShiftCloseOut,
    ShiftOpenIn,
    ShiftOut,
    WeightOut,
    XReportOut,
)
from branch_agent.settings import TillConfig
from branch_agent.status import AgentStatus
from branch_agent.stock import BalanceOut, CountSheetIn, StockDocumentIn, StockDocumentOut
from branch_agent.till_api import (
    StocktakeOpenIn,
    TillApi,
    UnfiscalIn,
)
from protocol.http_body import StrictBodyRule
from protocol.http_query import QueryParameterRule, QueryRefused
from protocol.problems import (
    BEARER_CHALLENGE,
    NOT_UTF8_DETAIL,
    FieldError,
    Problem,
    is_not_utf8,
    not_utf8_problem,
    problem_title,
    validation_errors,
)

if TYPE_CHECKING:
    from branch_agent.agent import Agent

__all__ = ["create_till_app"]

log = logging.getLogger(__name__)


class AgentHealth(msgspec.Struct, kw_only=True):
    # ok | degraded (the NATS server refuses or denies the agent, or the link has not
    # come up once since the start, after a grace of 15 s: see detail)
    status: str
    branch: str
    nats: str
    outbox_backlog: int
    # Why degraded ("": ok).
    detail: str = ""


def _agent(state: State) -> Agent:
    agent: Agent = state.agent
    return agent


def _bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _role_of(agent: Agent, token: str) -> tuple[str, TillConfig | None] | None:
    """Whose token it is: ("till", the till) or ("manager", None); None: nobody's."""
    for till in agent.settings.tills:
        if till.token and hmac.compare_digest(till.token.encode(), token.encode()):
            return "till", till
    expected = agent.settings.manager_token
    if expected and hmac.compare_digest(expected.encode(), token.encode()):
        return "manager", None
    return None


def _forbidden(request: Request[Any, Any, Any], role: str, allowed: str) -> NoReturn:
    # Worded as central's API words it (central.auth.middleware.authorize).
    raise PermissionDeniedException(
        f"role {role!r} may not {request.method} {request.url.path}; allowed: {allowed}"
    )


def _authenticated_till(
    request: Request[Any, Any, Any],
    state: State,
    authorization: Annotated[
        str | None, HeaderParameter(name="Authorization", required=False)
    ] = None,
) -> TillConfig:
    """The till whose token this is: 401 without a token or with nobody's, 403 with the
    store manager's (a valid token without the till role)."""
    agent = _agent(state)
    token = _bearer_token(authorization)
    if token is None:
        raise NotAuthorizedException(
            "a till token is required: Authorization: Bearer <token>", headers=BEARER_CHALLENGE
        )
    found = _role_of(agent, token)
    if found is None:
        raise NotAuthorizedException("unknown token", headers=BEARER_CHALLENGE)
    role, till = found
    if till is None:
        _forbidden(request, role, "till")
    return till


def _manager(
    request: Request[Any, Any, Any],
    state: State,
    authorization: Annotated[
        str | None, HeaderParameter(name="Authorization", required=False)
    ] = None,
) -> str:
    """The store manager: 401 without a token or with nobody's (or with the manager API
    off), 403 with a till's token (a valid token without the manager role)."""
    agent = _agent(state)
    token = _bearer_token(authorization)
    expected = agent.settings.manager_token
    if token is None:
        raise NotAuthorizedException(
            "the store manager's token is required", headers=BEARER_CHALLENGE
        )
    if expected and hmac.compare_digest(expected.encode(), token.encode()):
        return "manager"
    found = _role_of(agent, token)
    if found is None:
        raise NotAuthorizedException("unknown token", headers=BEARER_CHALLENGE)
    _forbidden(request, found[0], "manager")


def _manager_approval(agent: Agent, token: str | None) -> None:
    """A return without receipt is approved by the store manager at the till: the till
    sends the manager's token (the one the manager routes take) in X-Manager-Token.
    Missing or not the manager's: 403 naming the header, nothing recorded."""
    expected = agent.settings.manager_token
    if not expected:
        raise Forbidden(
            "a return without receipt needs a manager's approval, and this agent has no"
            " manager token configured",
            field="X-Manager-Token",
        )
    if not token:
        raise Forbidden(
            "a return without receipt needs a manager's approval: the manager's token in"
            " X-Manager-Token",
            field="X-Manager-Token",
        )
    if not hmac.compare_digest(expected.encode(), token.strip().encode()):
        raise Forbidden("X-Manager-Token is not the store manager's token", field="X-Manager-Token")


def _api(state: State) -> TillApi:
    return TillApi(_agent(state))


TillId = Annotated[str, PathParameter(description="the till")]
SaleId = Annotated[str, PathParameter(description="the till's sale id")]
DocumentId = Annotated[str, PathParameter(description="stock document id")]
ShiftId = Annotated[str, PathParameter(description="the shift's id")]


class SaleController(Controller):
    path = "/api/v1/sales"
    tags = ["sales"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @post(
        "/",
        operation_id="recordSale",
        summary="Record a sale (idempotent on the till's sale_id): 201 new, 200 repeat",
        description="The answer's status is fiscalized, recorded (no fiscal printer) or "
        "pending_fiscal: the sale is safe and is completed once the printer is back.",
    )
    async def record_sale(
        self, state: State, till: NamedDependency[TillConfig], data: JSONBody[SaleIn]
    ) -> Response[SaleOut]:
        sale, created = await _agent(state).record_sale(till.id, data)
        return Response(sale, status_code=201 if created else 200)

    @get(
        "/pending",
        operation_id="listPendingSales",
        summary="This till's sales waiting for the printer",
    )
    async def pending(self, state: State, till: NamedDependency[TillConfig]) -> list[SaleOut]:
        return await _agent(state).sales.pending_sales(till.id)

    @get("/{sale_id:str}", operation_id="getSale", summary="One sale of this till")
    async def get_sale(
        self, state: State, till: NamedDependency[TillConfig], sale_id: SaleId
    ) -> SaleOut:
        return await _agent(state).sales.get_sale(till.id, sale_id)

    @post(
        "/fiscalize",
        operation_id="retryFiscal",
        summary="Send this till's pending sales to the fiscal printer now",
        status_code=200,
    )
    async def fiscalize(self, state: State, till: NamedDependency[TillConfig]) -> list[SaleOut]:
        return await _api(state).fiscalize(till.id)


class ReturnController(Controller):
    path = "/api/v1/returns"
    tags = ["returns"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @post(
        "/",
        operation_id="recordReturn",
        summary="A customer return against a receipt, or without one approved by the manager (idempotent on return_id)",
    )
    async def record_return(
        self,
        state: State,
        till: NamedDependency[TillConfig],
        data: JSONBody[ReturnIn],
        manager_token: Annotated[
            str | None,
            HeaderParameter(
                name="X-Manager-Token",
                required=False,
                description="the store manager's token: approves a return without receipt",
            ),
        ] = None,
    ) -> Response[ReturnOut]:
        if data.without_receipt:
            _manager_approval(_agent(state), manager_token)
        ret, created = await _agent(state).record_return(till.id, data)
        _agent(state).sender.wake()
        return Response(ret, status_code=201 if created else 200)


class ProductController(Controller):
    path = "/api/v1/products"
    tags = ["products"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @get(
        "/by-barcode/{code:str}",
        operation_id="lookupBarcode",
        summary="Product by barcode (weight-embedded codes too), with price and promotion",
    )
    async def by_barcode(
        self,
        state: State,
        till: NamedDependency[TillConfig],
        code: Annotated[str, PathParameter(description="scanned code", max_length=64)],
    ) -> ProductOut:
        return await _api(state).lookup_barcode(code)

    @get("/", operation_id="searchProducts", summary="Products whose name or SKU contains the text")
    async def search(
        self,
        state: State,
        till: NamedDependency[TillConfig],
        q: Annotated[str, QueryParameter(min_length=1, max_length=100)],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> list[ProductOut]:
        return await _api(state).search(q, limit)


class DeviceController(Controller):
    path = "/api/v1/devices"
    tags = ["devices"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @get(
        "/scale/weight", operation_id="readWeight", summary="The stable weight on this till's scale"
    )
    async def weight(self, state: State, till: NamedDependency[TillConfig]) -> WeightOut:
        return await _api(state).read_weight(till.id)

    @get(
        "/scanner/next",
        operation_id="nextScan",
        summary="The next code read by this till's serial scanner, resolved to a product",
    )
    async def next_scan(
        self,
        state: State,
        till: NamedDependency[TillConfig],
        wait_s: Annotated[float, QueryParameter(ge=0, le=30)] = 5.0,
    ) -> ProductOut:
        return await _api(state).next_scan(till.id, wait_s)


class ShiftController(Controller):
    path = "/api/v1/shifts"
    tags = ["shifts"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @post("/", operation_id="openShift", summary="Open a shift at this till (repeat: 200)")
    async def open_shift(
        self, state: State, till: NamedDependency[TillConfig], data: JSONBody[ShiftOpenIn]
    ) -> Response[ShiftOut]:
        shift, created = await _agent(state).shifts.open_shift(till.id, data)
        _agent(state).sender.wake()
        return Response(shift, status_code=201 if created else 200)

    @get("/current", operation_id="currentShift", summary="The open shift with the agent's totals")
    async def current(self, state: State, till: NamedDependency[TillConfig]) -> ShiftOut:
        return await _agent(state).shifts.current(till.id)

    @get(
        "/{shift_id:str}",
        operation_id="getShift",
        summary="A shift of this till, open or closed, with its totals and Z report figures",
    )
    async def get_shift(
        self, state: State, till: NamedDependency[TillConfig], shift_id: ShiftId
    ) -> ShiftCloseOut:
        return await _agent(state).shifts.get_shift(till.id, shift_id)

    @post(
        "/current/x-report",
        operation_id="xReport",
        summary="X report: the printer's and the agent's totals, shift stays open",
        status_code=200,
    )
    async def x_report(self, state: State, till: NamedDependency[TillConfig]) -> XReportOut:
        return await _agent(state).shifts.x_report(till.id)

    @post(
        "/current/close",
        operation_id="closeShift",
        summary="Close the shift with the fiscal printer's Z report (repeated after it "
        "succeeded: the same answer)",
        status_code=200,
    )
    async def close(
        self,
        state: State,
        till: NamedDependency[TillConfig],
        data: JSONBody[ShiftCloseIn | None] = None,
    ) -> ShiftCloseOut:
        # No body (as before counted cash): the close as ever, nothing counted.
        counted = data.counted_cash if data is not None else None
        closed = await _agent(state).shifts.close_shift(till.id, counted_cash=counted)
        _agent(state).sender.wake()
        return closed


class CashController(Controller):
    path = "/api/v1/cash-moves"
    tags = ["shifts"]
    dependencies = {"till": Provide(_authenticated_till, sync_to_thread=False)}

    @post("/", operation_id="moveCash", summary="Cash in or out of this till's drawer")
    async def move_cash(
        self, state: State, till: NamedDependency[TillConfig], data: JSONBody[CashMoveIn]
    ) -> Response[CashMoveOut]:
        move, created = await _agent(state).shifts.move_cash(till.id, data)
        _agent(state).sender.wake()
        return Response(move, status_code=201 if created else 200)


class StockController(Controller):
    path = "/api/v1/stock"
    tags = ["stock"]
    dependencies = {"manager": Provide(_manager, sync_to_thread=False)}

    @post(
        "/documents",
        operation_id="postStockDocument",
        summary="Post a goods receipt, write-off, transfer out/in or supplier return",
    )
    async def post_document(
        self, state: State, manager: NamedDependency[str], data: JSONBody[StockDocumentIn]
    ) -> Response[StockDocumentOut]:
        doc, created = await _agent(state).stock.post_document(data)
        _agent(state).sender.wake()
        return Response(doc, status_code=201 if created else 200)

    @get("/documents/{document_id:str}", operation_id="getStockDocument", summary="One document")
    async def get_document(
        self, state: State, manager: NamedDependency[str], document_id: DocumentId
    ) -> StockDocumentOut:
        return await _agent(state).stock.get_document(document_id)

    @post("/stocktakes", operation_id="openStocktake", summary="Start a stocktake (draft)")
    async def open_stocktake(
        self, state: State, manager: NamedDependency[str], data: JSONBody[StocktakeOpenIn]
    ) -> StockDocumentOut:
        return await _agent(state).stock.open_stocktake(data.document_id, data.author, data.reason)

    @post(
        "/stocktakes/{document_id:str}/sheets",
        operation_id="addCountSheet",
        summary="Record a count sheet (the same sheet again replaces it)",
        status_code=200,
    )
    async def add_sheet(
        self,
        state: State,
        manager: NamedDependency[str],
        document_id: DocumentId,
        data: JSONBody[CountSheetIn],
    ) -> dict[str, int]:
        return {"products": await _agent(state).stock.add_count_sheet(document_id, data)}

    @post(
        "/stocktakes/{document_id:str}/post",
        operation_id="postStocktake",
        summary="Post the differences between counted and booked stock",
        status_code=200,
    )
    async def post_stocktake(
        self, state: State, manager: NamedDependency[str], document_id: DocumentId
    ) -> StockDocumentOut:
        doc = await _agent(state).stock.post_stocktake(document_id)
        _agent(state).sender.wake()
        return doc

    @get("/balances", operation_id="stockBalances", summary="Stock on hand")
    async def balances(
        self,
        state: State,
        manager: NamedDependency[str],
        sku: Annotated[list[str] | None, QueryParameter(required=False)] = None,
    ) -> list[BalanceOut]:
        return await _agent(state).stock.stock_on_hand(sku)


class ManagerSalesController(Controller):
    path = "/api/v1/manager/sales"
    tags = ["sales"]
    dependencies = {"manager": Provide(_manager, sync_to_thread=False)}

    @get(
        "/pending",
        operation_id="allPendingSales",
        summary="Sales of every till waiting for a printer",
    )
    async def pending(self, state: State, manager: NamedDependency[str]) -> list[SaleOut]:
        return await _agent(state).sales.pending_sales()

    @get(
        "/recorded-again",
        operation_id="salesRecordedAgain",
        summary="Sales and returns central holds that this agent's restored database "
        "recorded and printed again (a till's retry taken before central's list came): "
        "refund the second charge",
    )
    async def recorded_again(
        self, state: State, manager: NamedDependency[str]
    ) -> list[RecordedAgainOut]:
        return await _agent(state).recorded_again()

    @post(
        "/recorded-again/{kind:str}/{till_id:str}/{record_id:str}/settle",
        operation_id="settleRecordedAgain",
        summary="Settle a sale or return recorded again after a restore (the second charge "
        "refunded, or none): it leaves the status, stays listed with who settled it",
        status_code=200,
    )
    async def settle_recorded_again(
        self,
        state: State,
        manager: NamedDependency[str],
        kind: Annotated[Literal["sale", "return"], PathParameter(description="sale or return")],
        till_id: TillId,
        record_id: Annotated[str, PathParameter(description="its sale_id or return_id")],
        data: JSONBody[RecordedAgainSettleIn],
    ) -> RecordedAgainOut:
        return await _agent(state).settle_recorded_again(kind, till_id, record_id, data)

    @post(
        "/{till_id:str}/{sale_id:str}/complete-unfiscal",
        operation_id="completeUnfiscal",
        summary="The till's fiscal printer is gone for good: send the sale up unfiscalized",
        status_code=200,
    )
    async def complete_unfiscal(
        self,
        state: State,
        manager: NamedDependency[str],
        till_id: TillId,
        sale_id: SaleId,
        data: JSONBody[UnfiscalIn],
    ) -> SaleOut:
        return await _api(state).complete_unfiscal(till_id, sale_id, data.reason)

    @post(
        "/{till_id:str}/{sale_id:str}/print-on-new-printer",
        operation_id="printOnNewPrinter",
        summary="The till's printer was swapped and the old one's journal shows the sale "
        "was not printed: print it on the new printer (exactly once)",
        status_code=200,
    )
    async def print_on_new_printer(
        self,
        state: State,
        manager: NamedDependency[str],
        till_id: TillId,
        sale_id: SaleId,
        data: JSONBody[UnfiscalIn],
    ) -> SaleOut:
        return await _api(state).print_on_new_printer(till_id, sale_id, data.reason)


class ManagerTillsController(Controller):
    path = "/api/v1/manager/tills"
    tags = ["sales"]
    dependencies = {"manager": Provide(_manager, sync_to_thread=False)}

    @post(
        "/{till_id:str}/fiscal/finish-open-receipt",
        operation_id="finishOpenReceipt",
        summary="Finish the receipt left open on the till's fiscal printer (cancelled if "
        "nothing was paid, else the rest paid in cash and closed)",
        status_code=200,
    )
    async def finish_open_receipt(
        self,
        state: State,
        manager: NamedDependency[str],
        till_id: TillId,
        data: JSONBody[UnfiscalIn],
    ) -> list[FiscalInterventionOut]:
        return await _api(state).finish_open_receipt(till_id, data.reason)

    @post(
        "/{till_id:str}/fiscal/settle-pending",
        operation_id="settlePendingFiscalCash",
        summary="Settle a cash move, float deposit, refund pay-out or Z report left pending "
        "on a fiscal printer that cannot answer for it (printed / not printed)",
        status_code=200,
    )
    async def settle_pending(
        self,
        state: State,
        manager: NamedDependency[str],
        till_id: TillId,
        data: JSONBody[SettleIn],
    ) -> SettleOut:
        return await _api(state).settle_pending(till_id, data)


class ManagerReturnsController(Controller):
    path = "/api/v1/manager/returns"
    tags = ["returns"]
    dependencies = {"manager": Provide(_manager, sync_to_thread=False)}

    @get(
        "/pending",
        operation_id="allPendingReturns",
        summary="Customer returns of every till whose storno receipt waits for a printer",
    )
    async def pending(self, state: State, manager: NamedDependency[str]) -> list[ReturnOut]:
        return await _agent(state).sales.pending_returns()

    @post(
        "/{till_id:str}/{return_id:str}/complete-unfiscal",
        operation_id="completeReturnUnfiscal",
        summary="The till's fiscal printer is gone for good: send the return up without storno",
        status_code=200,
    )
    async def complete_unfiscal(
        self,
        state: State,
        manager: NamedDependency[str],
        till_id: TillId,
        return_id: Annotated[str, PathParameter(description="the till's return id")],
        data: JSONBody[UnfiscalIn],
    ) -> ReturnOut:
        return await _api(state).complete_return_unfiscal(till_id, return_id, data.reason)

    @post(
        "/{till_id:str}/{return_id:str}/print-on-new-printer",
        operation_id="printReturnOnNewPrinter",
        summary="The till's printer was swapped and the old one's journal shows the storno "
        "was not printed: print it on the new printer (exactly once)",
        status_code=200,
    )
    async def print_on_new_printer(
        self,
        state: State,
        manager: NamedDependency[str],
        till_id: TillId,
        return_id: Annotated[str, PathParameter(description="the till's return id")],
        data: JSONBody[UnfiscalIn],
    ) -> ReturnOut:
        return await _api(state).print_return_on_new_printer(till_id, return_id, data.reason)


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/", operation_id="getAgentHealth", summary="Liveness of the agent and its NATS link")
    async def health(self, state: State) -> AgentHealth:
        return await _agent(state).health()

    @get(
        "/status",
        operation_id="getAgentStatus",
        summary="Link, backlog, last sync, applied version, each device's state",
    )
    async def status(self, state: State) -> AgentStatus:
        return await _agent(state).status()


def _problem(
    status: int,
    title: str,
    detail: str,
    path: str,
    errors: tuple[FieldError, ...] = (),
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body = Problem(
        title=title, status=status, detail=detail, instance=path, errors=errors, extra=extra
    )
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    errors: tuple[FieldError, ...] = ()
    status = exc.status_code
    if status == 400 and is_not_utf8(exc):  # msgspec 0.23's words for it
        return _on_not_utf8(request, exc)
    if isinstance(exc, ValidationException):
        # The same fields at fault as central's API names; a missing body is named by
        # the fields the route's body needs.
        body = request.route_handler.parsed_fn_signature.parameters.get("data")
        errors = validation_errors(
            exc.extra,
            str(exc.detail),
            body.annotation if body is not None else None,
            exc.__cause__,
        )
        status = 422 if errors else 400
    # The exception's headers go with it: a 401's challenge, a 405's Allow.
    return _problem(
        status, problem_title(status), exc.detail, request.url.path, errors, headers=exc.headers
    )


def _on_query_refused(request: Request[Any, Any, Any], exc: QueryRefused) -> Response[bytes]:
    # An undeclared or repeated query parameter (protocol.http_query): 400 naming it.
    status = exc.status_code
    return _problem(status, problem_title(status), exc.detail, request.url.path, exc.errors)


def _on_agent_error(request: Request[Any, Any, Any], exc: AgentError) -> Response[bytes]:
    if exc.fields:
        errors = tuple(FieldError(field=name, message=text) for name, text in exc.fields)
    else:
        errors = (FieldError(field=exc.field, message=exc.detail),) if exc.field else ()
    return _problem(exc.status, exc.title, exc.detail, request.url.path, errors, exc.extra)


def _on_not_utf8(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # A JSON string holding bytes that are not UTF-8 (msgspec before 0.23 raised
    # UnicodeDecodeError, not its DecodeError; 0.23 a DecodeError Litestar makes a 400):
    # the till's fault, nothing parsed and so nothing recorded; no route decodes other
    # bytes as UTF-8 strictly.
    problem = not_utf8_problem(request.url.path)
    return _problem(400, problem.title, NOT_UTF8_DETAIL, request.url.path, problem.errors)


def _on_crash(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if is_storage_full(exc):
        # Any write route (documents, counts, shifts) refuses clearly when the disk is
        # full; the transaction was rolled back, so nothing half-written remains.
        log.error("storage full on %s: %s", request.url.path, exc)
        return _problem(
            507,
            "Storage full",
            "the agent's storage is full: nothing was recorded",
            request.url.path,
        )
    if is_storage_failure(exc):
        # The write may or may not have reached the disk: the request's own id (sale,
        # return, document, move) makes sending it again safe, and it says what was kept.
        log.error("storage failed on %s: %s", request.url.path, exc)
        return _problem(
            500,
            "Storage error",
            "the agent could not write to its disk (disk I/O error): whether this was "
            "recorded is not known; send the same request again, with the same id",
            request.url.path,
        )
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _problem(
        500, "Internal server error", "the agent failed to handle this request", request.url.path
    )


_handlers: ExceptionHandlersMap = {
    HTTPException: _on_http,
    QueryRefused: _on_query_refused,
    AgentError: _on_agent_error,
    UnicodeDecodeError: _on_not_utf8,
    Exception: _on_crash,
}


def create_till_app(agent: Agent) -> Litestar:
    return Litestar(
        route_handlers=[
            SaleController,
            ReturnController,
            ProductController,
            DeviceController,
            ShiftController,
            CashController,
            StockController,
            ManagerSalesController,
            ManagerReturnsController,
            ManagerTillsController,
            HealthController,
        ],
        state=State({"agent": agent}),
        exception_handlers=_handlers,
        # A query parameter the route does not declare, or a single-valued one given
        # twice, is a 400 problem naming it, as at central.
        plugins=[QueryParameterRule(), StrictBodyRule()],
        request_max_body_size=1024 * 1024,
        openapi_config=OpenAPIConfig(
            title=f"Backroom till API ({agent.settings.branch})", version="1.0.0", path="/docs"
        ),
    )
