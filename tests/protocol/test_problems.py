"""The fields at fault of a request the web framework refused, as both APIs name them."""

from __future__ import annotations

from protocol.problems import FieldError, validation_errors


def test_unknown_fields_are_named_by_themselves() -> None:
    extra = [
        {"key": "data", "message": "Object contains unknown field `format`"},
        {"key": "lines", "message": "Object contains unknown field `qty` - at `$.lines[0]`"},
        {"key": "price", "message": "Expected `int`, got `str` - at `$.price`"},
        {"source": "query", "message": "bad"},
        "not a dict",
    ]
    assert validation_errors(extra, "Validation failed for POST /x") == (
        FieldError(field="format", message="Object contains unknown field `format`"),
        FieldError(
            field="lines.qty", message="Object contains unknown field `qty` - at `$.lines[0]`"
        ),
        FieldError(field="price", message="Expected `int`, got `str` - at `$.price`"),
        FieldError(field="query", message="bad"),
    )


def test_a_missing_parameter_is_named_from_the_detail() -> None:
    detail = "Missing required query parameter 'q' for path /api/v1/products/search"
    assert validation_errors(None, detail) == (
        FieldError(field="q", message="missing required query parameter"),
    )
    assert validation_errors([], "Validation failed") == ()


def test_a_missing_body_is_named_by_the_fields_it_needs() -> None:
    import msgspec

    class Body(msgspec.Struct):
        reason: str
        note: str = ""

    # what the framework says for a request without body: its KeyError's text
    extra = [{"key": "data", "message": "'data'"}]
    assert validation_errors(extra, "Validation failed for POST /x", Body) == (
        FieldError(field="reason", message="required: send a JSON body with `reason`"),
    )
    assert validation_errors(extra, "Validation failed for POST /x") == (
        FieldError(field="body", message="required: send a JSON object body"),
    )
    missing = [{"key": "data", "message": "Object missing required field `reason`"}]
    assert validation_errors(missing, "Validation failed for POST /x", Body) == (
        FieldError(field="reason", message="Object missing required field `reason`"),
    )


def test_a_missing_field_is_named_by_its_path() -> None:
    extra = [
        {"key": "data", "message": "Object missing required field `sku`"},
        {"key": "lines", "message": "Object missing required field `sku` - at `$.lines[0]`"},
        # The web framework moves the path into the key.
        {"key": "lines[1]", "message": "Object missing required field `quantity`"},
    ]
    assert [e.field for e in validation_errors(extra, "Validation failed for POST /x")] == [
        "sku",
        "lines[0].sku",
        "lines[1].quantity",
    ]
