"""Fuzzing the head-office API from its own OpenAPI schema (schemathesis + hypothesis).

Every operation gets generated requests (valid and invalid per the schema) with an
admin token, so they pass authentication and reach validation and the services.
No request may get a 5xx; a rejected request (4xx) must change nothing: the row
counts of every table and the audit log stay as they were.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import given as hypothesis_given

from central.app import create_app
from tests.conftest import asgi_client, create_api_token, table_row_counts

EXAMPLES_PER_OPERATION = 8


async def test_api_fuzzed_from_its_openapi_schema(central: Any) -> None:
    app = create_app(central.settings, runtime=central)
    token = await create_api_token(central, "admin")
    loop = asyncio.get_running_loop()
    async with asgi_client(app, headers={"Authorization": f"Bearer {token}"}) as client:
        raw = (await client.get("/docs/openapi.json")).json()
        schema = schemathesis.openapi.from_dict(raw)
        failures: list[str] = []
        calls = 0

        async def call(case: Any) -> tuple[int, bool, str]:
            before = await table_row_counts(central)
            kwargs: dict[str, Any] = {"params": case.query or None}
            headers = {k: str(v) for k, v in (case.headers or {}).items()}
            headers.pop("Authorization", None)
            if case.body is not None and not isinstance(case.body, schemathesis.core.NotSet):
                kwargs["content"] = json.dumps(case.body).encode()
                headers["Content-Type"] = "application/json"
            response = await client.request(
                case.method, case.formatted_path, headers=headers, **kwargs
            )
            unchanged = response.status_code < 400 or before == await table_row_counts(central)
            return response.status_code, unchanged, response.text[:300]

        def fuzz_operation(operation: Any) -> None:
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @hypothesis_given(case=operation.as_strategy())
            def run(case: Any) -> None:
                nonlocal calls
                status, unchanged, text = asyncio.run_coroutine_threadsafe(call(case), loop).result(
                    timeout=30
                )
                calls += 1
                where = f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                if status >= 500:
                    failures.append(f"{status} on {where}: {text}")
                if not unchanged:
                    failures.append(f"rejected ({status}) but changed rows: {where}")

            run()

        def fuzz_all() -> int:
            operations = 0
            for result in schema.get_all_operations():
                fuzz_operation(result.ok())
                operations += 1
            return operations

        # Hypothesis drives synchronously in a thread; the app serves on this loop.
        operations = await asyncio.to_thread(fuzz_all)
    assert operations >= 10
    assert calls >= operations
    assert failures == []
