"""The query-string rule both HTTP APIs install: only the parameters a route declares
(its own and its dependencies'), each once unless it takes a list; a 400 problem naming
every parameter at fault, before the handler runs; the 400 in the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest
from litestar import Litestar, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.testing import AsyncTestClient

from protocol.http_query import QueryParameterRule, QueryRefused, query_errors
from protocol.problems import FieldError


def test_query_errors_name_unknown_and_repeated_parameters_in_request_order() -> None:
    query = {"brnach": ["B001"], "group_by": ["branch", "product"], "sku": ["A", "B"]}
    errors = query_errors(query, declared={"branch", "group_by", "sku"}, repeatable={"sku"})
    assert errors == (
        FieldError(
            field="brnach",
            message="not a query parameter of this route (it takes: branch, group_by, sku)",
        ),
        FieldError(field="group_by", message="given 2 times: it takes one value"),
    )
    assert query_errors({"x": [""]}, declared=set(), repeatable=set()) == (
        FieldError(field="x", message="not a query parameter of this route (it takes: none)"),
    )
    assert query_errors({"branch": ["B1"]}, declared={"branch"}, repeatable=set()) == ()
    assert query_errors({}, declared=set(), repeatable=set()) == ()


def test_the_refusal_is_a_400_problem_naming_each_parameter() -> None:
    errors = (FieldError(field="tz", message="m1"), FieldError(field="grup_by", message="m2"))
    problem = QueryRefused(errors).problem("/api/v1/reports/sales")
    assert msgspec.json.decode(msgspec.json.encode(problem)) == {
        "title": "Bad request",
        "status": 400,
        "detail": "tz: m1; grup_by: m2",
        "instance": "/api/v1/reports/sales",
        "errors": [{"field": "tz", "message": "m1"}, {"field": "grup_by", "message": "m2"}],
    }


calls: list[str] = []


def _page_size(size: Annotated[int, QueryParameter(name="size")] = 10) -> int:
    return size


@get("/items", dependencies={"page_size": Provide(_page_size, sync_to_thread=False)})
async def items(
    page_size: NamedDependency[int],
    branch: Annotated[str | None, QueryParameter(name="branch")] = None,
    sku: Annotated[list[str] | None, QueryParameter(name="sku", required=False)] = None,
) -> dict[str, Any]:
    calls.append("items")
    return {"branch": branch, "sku": sku, "size": page_size}


@post("/items/{item_id:int}", status_code=200)
async def change(
    item_id: Annotated[int, PathParameter(name="item_id")], data: JSONBody[dict[str, Any]]
) -> dict[str, Any]:
    calls.append("change")
    return {"id": item_id}


@get("/hidden", include_in_schema=False)
async def hidden() -> str:
    return "ok"


def _refused(request: Request[Any, Any, Any], exc: QueryRefused) -> Response[bytes]:
    return Response(
        msgspec.json.encode(exc.problem(request.url.path)),
        status_code=exc.status_code,
        media_type="application/problem+json",
    )


@pytest.fixture
async def client() -> Any:
    calls.clear()
    app = Litestar(
        [items, change, hidden],
        plugins=[QueryParameterRule()],
        exception_handlers={QueryRefused: _refused},
    )
    async with AsyncTestClient(app) as test_client:
        yield test_client


async def fields(response: Any) -> list[str]:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in response.json()["errors"]]


async def test_declared_parameters_pass_and_a_list_parameter_repeats(client: Any) -> None:
    r = await client.get("/items?branch=B1&sku=A&sku=B&size=5")
    assert r.status_code == 200, r.text
    assert r.json() == {"branch": "B1", "sku": ["A", "B"], "size": 5}
    assert (await client.get("/items")).status_code == 200


async def test_undeclared_and_repeated_parameters_are_refused_before_the_handler(
    client: Any,
) -> None:
    assert await fields(await client.get("/items?brnach=B1")) == ["brnach"]
    assert await fields(await client.get("/items?branch=B1&branch=B2")) == ["branch"]
    # A dependency's parameter is single-valued too; a path parameter is no query one.
    assert await fields(await client.get("/items?size=1&size=2&Branch=B1")) == ["size", "Branch"]
    assert await fields(await client.post("/items/7?item_id=8", json={})) == ["item_id"]
    assert await fields(await client.get("/items?flag")) == ["flag"]
    assert calls == []
    assert (await client.post("/items/7", json={})).status_code == 200
    assert calls == ["change"]


async def test_a_route_left_out_of_the_openapi_document_is_not_checked(client: Any) -> None:
    assert (await client.get("/hidden?v=2")).status_code == 200


async def test_every_documented_operation_describes_the_400_problem(client: Any) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations = [op for ops in schema["paths"].values() for op in ops.values()]
    assert len(operations) == 2
    for operation in operations:
        bad = operation["responses"]["400"]
        assert "query parameter" in bad["description"]
        assert bad["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    problem = schema["components"]["schemas"]["Problem"]
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/FieldError"}
