"""A query parameter a central route does not declare (a misspelt one), or a
single-valued one given twice, is refused with a 400 problem naming it, and nothing is
done: before, ``brnach=B001`` listed the whole chain, ``grup_by=`` gave the default
grouping, ``tz=`` was ignored and ``group_by=branch&group_by=product`` used the last."""

from __future__ import annotations

from typing import Any

from tests.conftest import register_branch, table_row_counts

SALES = "/api/v1/reports/sales"
PERIOD = {"date_from": "2026-11-01", "date_to": "2026-11-28"}


def refused(response: Any) -> dict[str, Any]:
    """The 400 problem, shaped as every validation problem of the API."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert (problem["status"], problem["title"]) == (400, "Bad request")
    assert problem["detail"] == "; ".join(
        f"{e['field']}: {e['message']}" for e in problem["errors"]
    )
    return problem


def fields(response: Any) -> list[str]:
    return [e["field"] for e in refused(response)["errors"]]


async def test_the_accountants_misspellings_are_refused_by_name(
    central: Any, central_client: Any
) -> None:
    await register_branch(central, "B001")
    c = central_client
    r = await c.get(SALES, params={**PERIOD, "brnach": "B001"})
    problem = refused(r)
    assert problem["instance"] == SALES
    (error,) = problem["errors"]
    assert error["field"] == "brnach"
    # The message lists what the route takes, so the misspelling can be put right.
    assert error["message"] == (
        "not a query parameter of this route "
        "(it takes: branch, compare, date_from, date_to, format, group_by)"
    )
    assert fields(await c.get(SALES, params={**PERIOD, "grup_by": "product"})) == ["grup_by"]
    # Every parameter at fault, in the order of the request.
    r = await c.get(f"{SALES}?date_from=2026-11-01&timezone=UTC&date_to=2026-11-28&tz=Mars/Olympus")
    assert fields(r) == ["timezone", "tz"]
    # A single-valued parameter given twice: not the last one silently.
    r = await c.get(
        f"{SALES}?date_from=2026-11-01&date_to=2026-11-28&group_by=branch&group_by=product"
    )
    (error,) = refused(r)["errors"]
    assert error == {"field": "group_by", "message": "given 2 times: it takes one value"}
    r = await c.get("/api/v1/receipts?branch=B001&branch=B002&limit=5&limit=6")
    assert fields(r) == ["branch", "limit"]
    # The declared parameters, each once, as before (pagination and format included).
    r = await c.get(SALES, params={**PERIOD, "branch": "B001", "group_by": "branch,day"})
    assert r.status_code == 200, r.text
    r = await c.get(SALES, params={**PERIOD, "format": "csv"})
    assert (r.status_code, r.headers["content-type"]) == (200, "text/csv; charset=utf-8")
    r = await c.get("/api/v1/receipts", params={"branch": "B001", "limit": 5, "offset": 0})
    assert r.status_code == 200, r.text


async def test_a_refused_write_changes_nothing(central: Any, central_client: Any) -> None:
    """The refusal comes before the route runs: a valid body with a misspelt parameter
    records nothing (no closed day, no audit entry)."""
    await register_branch(central, "B1")
    before = await table_row_counts(central)
    body = {"branch": "B1", "local_date": "2026-11-20"}
    r = await central_client.post("/api/v1/shifts/closed-days?brnach=B1", json=body)
    assert fields(r) == ["brnach"]
    r = await central_client.post("/api/v1/dead-letters/replay?branch=B1&limit=1&limit=2")
    assert fields(r) == ["limit"]
    assert await table_row_counts(central) == before
    # The same request without the misspelt parameter: the day closed, one audit entry.
    r = await central_client.post("/api/v1/shifts/closed-days", json=body)
    assert r.status_code == 201, r.text
    after = await table_row_counts(central)
    changed = {table: after[table] - n for table, n in before.items() if after[table] != n}
    assert changed == {"closed_days": 1, "audit_log": 1}


async def test_every_documented_operation_refuses_and_documents_it(
    central: Any, central_client: Any
) -> None:
    """Every operation of the OpenAPI document: an undeclared parameter, and each of
    its single-valued query parameters given twice, is a 400 naming it (nothing
    changed); the document describes that 400 as the problem body it is."""
    schema = (await central_client.get("/docs/openapi.json")).json()
    assert schema["components"]["schemas"]["Problem"]["required"] == ["status", "title"]
    before = await table_row_counts(central)
    operations = 0
    repeated = 0
    for path, items in schema["paths"].items():
        for method, operation in items.items():
            assert operation["responses"]["400"]["content"] == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }, (method, path)
            url = path
            query: list[str] = []
            for parameter in operation.get("parameters", []):
                name = parameter["name"]
                if parameter["in"] == "path":
                    integer = "integer" in str(parameter["schema"])
                    url = url.replace(f"{{{name}}}", "1" if integer else "B1")
                elif parameter["in"] == "query":
                    assert "array" not in str(parameter["schema"]), (path, name)
                    query.append(name)
            r = await central_client.request(method, f"{url}?zz_unknown=1")
            assert fields(r) == ["zz_unknown"], (method, path)
            for name in query:
                r = await central_client.request(method, f"{url}?{name}=1&{name}=2")
                assert fields(r) == [name], (method, path)
                repeated += 1
            operations += 1
    assert operations >= 60
    assert repeated >= 100
    assert await table_row_counts(central) == before


async def test_credentials_are_checked_first_and_the_docs_are_left_alone(
    central: Any, client_as: Any
) -> None:
    anonymous = await client_as(None)
    r = await anonymous.get("/api/v1/receipts?brnach=B1")
    assert r.status_code == 401, r.text
    analyst = await client_as("analyst")
    r = await analyst.post("/api/v1/dead-letters/replay?brnach=B1")
    assert r.status_code == 403, r.text
    # The documentation pages are not operations of the API.
    assert (await anonymous.get("/docs/openapi.json?v=2")).status_code == 200
