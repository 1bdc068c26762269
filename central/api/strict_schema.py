"""OpenAPI schemas of msgspec Structs that say when a body refuses unknown fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition

__all__ = ["StrictStructSchemaPlugin"]


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's Struct schema plus ``additionalProperties: false`` for a Struct with
    ``forbid_unknown_fields``: Litestar leaves it out, so the schema allowed any extra
    field the API answers 422 to (and clients generated from it would send them)."""

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        info = msgspec.inspect.type_info(field_definition.type_)
        if isinstance(info, msgspec.inspect.StructType) and info.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
