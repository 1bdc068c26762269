"""The OpenAPI document lists the errors each operation really answers: every
operation was documented with its success and a 400 only, while central answers 401
without a token, 403 to a role it does not allow, 404 for an unknown branch or record,
422 for a malformed parameter or body and 503 when the database is away; and the
reports, documented as JSON only and without units, answer CSV too. Each documented status here is
checked against a real answer, operation by operation."""

from __future__ import annotations

from typing import Any

from tests.conftest import register_branch, table_row_counts

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
# A value no typed query parameter (integer, boolean, date, date-time) takes.
MALFORMED = {"integer", "boolean", "date", "date-time"}


def _url(path: str, operation: dict[str, Any]) -> str:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            integer = "integer" in str(parameter["schema"])
            path = path.replace(f"{{{parameter['name']}}}", "987654" if integer else "ZZ9")
    return path


def _typed_query(operation: dict[str, Any]) -> str | None:
    """A query parameter of a type a word is not (its malformed value is a 422)."""
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query" and MALFORMED & set(str(parameter["schema"]).split("'")):
            return str(parameter["name"])
    return None


async def test_each_operation_documents_the_problems_it_answers(
    central: Any, central_client: Any, client_as: Any
) -> None:
    await register_branch(central, "B001")
    schema = (await central_client.get("/docs/openapi.json")).json()
    anonymous = await client_as(None)
    analyst = await client_as("analyst")
    before = await table_row_counts(central)
    checked: dict[int, int] = {401: 0, 403: 0, 404: 0, 422: 0}
    for path, items in schema["paths"].items():
        for method, operation in items.items():
            responses = operation["responses"]
            url = _url(path, operation)
            for status in responses.keys() - {"200", "201", "204"}:
                assert responses[status]["content"] == PROBLEM, (method, path, status)
            if path == "/health":
                assert responses.keys() == {"200", "400"}
                continue
            assert "503" in responses, (method, path)
            r = await anonymous.request(method, url)
            assert r.status_code == 401, (method, path, r.text)
            assert "401" in responses, (method, path)
            checked[401] += 1
            r = await analyst.request(method, url)
            assert (r.status_code == 403) == ("403" in responses), (method, path, r.text)
            checked[403] += r.status_code == 403
            if method != "get":
                continue  # the admin's requests below change nothing only when they read
            names = {p["name"] for p in operation.get("parameters", [])}
            if "branch" in names and "{branch}" not in path:
                # the other required parameters given, so that only the branch is at fault
                query = {"branch": "ZZ9", "sku": "X", "date_from": "2026-11-01"}
                query["date_to"] = "2026-11-02"
                params = {k: v for k, v in query.items() if k in names}
                r = await central_client.get(url, params=params)
                assert (r.status_code == 404) == ("404" in responses), (path, r.text)
                checked[404] += r.status_code == 404
            elif "{" in path:
                r = await central_client.get(url)
                assert r.status_code == 404, (path, r.text)
                assert "404" in responses, path
                # the problem names the path parameter at fault, as the document calls it
                path_names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
                named = {e["field"] for e in r.json()["errors"]}
                assert named, (path, r.text)
                assert named <= path_names, (path, named)
                checked[404] += 1
            typed = _typed_query(operation)
            if typed is not None:
                r = await central_client.get(url, params={typed: "not-a-value"})
                assert r.status_code == 422, (path, typed, r.text)
                assert "422" in responses, (path, typed)
                checked[422] += 1
    assert min(checked[401] // 3, checked[403], checked[404], checked[422]) >= 20, checked
    assert await table_row_counts(central) == before


async def test_the_reports_document_their_csv(central: Any, central_client: Any) -> None:
    await register_branch(central, "B001")
    schema = (await central_client.get("/docs/openapi.json")).json()
    reports = {p: items["get"] for p, items in schema["paths"].items() if "/reports/" in p}
    assert len(reports) == 10
    for path, operation in reports.items():
        content = operation["responses"]["200"]["content"]
        assert set(content) == {"application/json", "text/csv"}, path
        assert content["text/csv"]["schema"]["type"] == "string"
        # the units, which no field says: cents, thousandths, the CSV's decimal text
        assert "minor units (cents" in operation["description"], path
        assert "`qty_milli`: `qty`" in operation["description"], path
        params = {"format": "csv"}
        if any(p["name"] == "date_from" for p in operation["parameters"]):
            params |= {"date_from": "2026-11-01", "date_to": "2026-11-02"}
        r = await central_client.get(path, params=params)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/csv"), path


async def test_schema_names_are_each_one_type(central: Any, central_client: Any) -> None:
    """Two types of one name get module-prefixed names in the document
    (``pricing_BranchSyncOut``), which a generated client turns into clumsy classes:
    every schema but the generic pages is named by its type alone."""
    schema = (await central_client.get("/docs/openapi.json")).json()
    names = [n for n in schema["components"]["schemas"] if not n.startswith("Page_")]
    assert [n for n in names if "_" in n] == []
    assert {"BranchSyncOut", "BranchPricesAppliedOut"} <= set(names)


async def test_every_paged_list_answers_the_same_page(central: Any, central_client: Any) -> None:
    """README: every list answers {"items", "total", "limit", "offset", "total_exact"};
    the products list answered without total_exact."""
    schema = (await central_client.get("/docs/openapi.json")).json()
    components = schema["components"]["schemas"]
    pages = []
    for path, items in schema["paths"].items():
        ok = items.get("get", {}).get("responses", {}).get("200", {})
        ref = ok.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        properties = components[ref.rsplit("/", 1)[1]]["properties"] if ref else {}
        if "items" in properties and "total" in properties:
            assert set(properties) == {"items", "total", "limit", "offset", "total_exact"}, path
            pages.append(path)
    assert "/api/v1/products" in pages
    assert len(pages) >= 15
    body = (await central_client.get("/api/v1/products")).json()
    assert body["total_exact"] is True


async def test_the_conflicts_answered_are_documented(central: Any, central_client: Any) -> None:
    """A 409 (a record that exists already, a day closed twice, overlapping promotions)
    is in the operation's OpenAPI entry."""
    schema = (await central_client.get("/docs/openapi.json")).json()
    c = central_client
    product = {"sku": "P1", "name": "Milk", "vat_rate_bp": 1000}
    promotion = {
        "promotion_id": "PR1",
        "type": "percent",
        "percent_bp": 1000,
        "skus": ["P1"],
        "starts_at": "2030-01-01T00:00:00Z",
        "ends_at": "2030-01-31T00:00:00Z",
    }
    twice = [
        ("/api/v1/branches", {"code": "B1"}),
        ("/api/v1/shifts/closed-days", {"branch": "B1", "local_date": "2026-11-01"}),
        ("/api/v1/categories", {"code": "dairy", "name": "Dairy"}),
        ("/api/v1/zones", {"code": "north", "name": "North"}),
        ("/api/v1/formats", {"code": "mini", "name": "Mini"}),
        ("/api/v1/products", product),
        ("/api/v1/promotions", promotion),
        ("/api/v1/promotions", {**promotion, "promotion_id": "PR2"}),
        ("/api/v1/users", {"name": "ana", "role": "analyst"}),
    ]
    conflicts = 0
    for path, body in twice:
        first = await c.post(path, json=body)
        if first.status_code != 409:
            assert first.status_code in (200, 201), (path, first.text)
            first = await c.post(path, json=body)
        assert first.status_code == 409, (path, first.text)
        assert "409" in schema["paths"][path]["post"]["responses"], path
        conflicts += 1
    assert conflicts == len(twice)
