"""The OpenAPI document at ``/schema``, with every route documented from its contracts.

Litestar builds the document (paths, path parameters, operation ids, tags) from the handlers. The
handlers read their bodies themselves (so the edge, not Litestar, decides between 400 and 422 and
names the field), which leaves Litestar nothing to describe bodies and replies with; this render
plugin fills that in from the contract types, with msgspec's JSON Schema for them, once:

* request body: the request contract minus the fields the edge fills in (path parameters, token
  subject) and minus the tag; for body-less methods those fields become query parameters;
* responses: the reply contract for the success status, the error body for each error status
  the route can produce; bearer security for routes with ``auth``; ``Idempotency-Key`` on POST.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.openapi.plugins import JsonRenderPlugin

from edge.routes import Route

__all__ = ["ContractSchemaPlugin", "ErrorBody"]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every error response: ``field`` is a JSON path for 422; a 500 has only the id."""

    error: str
    correlation_id: str
    message: str = ""
    field: str = ""


_REF: Final = "#/components/schemas/{name}"
_ERRORS: Final = {
    "400": "Malformed JSON or header",
    "401": "Missing or invalid bearer token",
    "403": "Token lacks a required role",
    "404": "Not found",
    "409": "Conflict with current state (or the same Idempotency-Key in flight)",
    "413": "Body too large",
    "422": "A field does not fit the contract (its JSON path is in `field`)",
    "429": "Rate limited; see Retry-After and RateLimit-* headers",
    "500": "Internal error; only the correlation id is given",
    "503": "A dependency is unavailable; see Retry-After",
    "504": "No answer by the deadline",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _name_of(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[1]


class ContractSchemaPlugin(JsonRenderPlugin):
    """Serves the OpenAPI JSON at ``/schema`` and ``/schema/openapi.json`` (see module docs)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        super().__init__(path=("/", "/openapi.json"))
        self._routes = tuple(routes)
        self._rendered: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The document as JSON, built on first use (the routes never change afterwards)."""
        if self._rendered is None:
            self._rendered = msgspec.json.encode(self.document(openapi_schema))
        return self._rendered

    def document(self, openapi_schema: dict[str, Any]) -> dict[str, Any]:
        """Litestar's document with the contract schemas filled in (a copy)."""
        doc = copy.deepcopy(openapi_schema)
        types: list[Any] = [ErrorBody]
        for r in self._routes:
            types += [r.request_type, r.reply_type]
        refs, components = msgspec.json.schema_components(types, ref_template=_REF)
        schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(components)
        error_ref = refs[0]
        uses_auth = False
        for i, r in enumerate(self._routes):
            request_ref, reply_ref = refs[1 + 2 * i], refs[2 + 2 * i]
            operation = doc.get("paths", {}).get(r.openapi_path, {}).get(r.method.lower())
            if operation is None:
                continue
            client_schema = copy.deepcopy(components[_name_of(request_ref)])
            hidden = {"type", *r.server_fields}
            properties: dict[str, Any] = client_schema.get("properties", {})
            for name in hidden:
                properties.pop(name, None)
            required = [n for n in client_schema.get("required", []) if n not in hidden]
            if r.has_body:
                body_name = f"{_name_of(request_ref)}Body"
                client_schema["title"] = body_name
                if required:
                    client_schema["required"] = required
                else:
                    client_schema.pop("required", None)
                schemas[body_name] = client_schema
                operation["requestBody"] = {
                    "required": bool(required),
                    "content": {"application/json": {"schema": _ref(body_name)}},
                }
            else:
                parameters = operation.setdefault("parameters", [])
                parameters.extend(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "schema": schema,
                    }
                    for name, schema in properties.items()
                )
            if r.method == "POST":
                operation.setdefault("parameters", []).append(
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Same key and body: the first response again; "
                        "same key, other body: 422.",
                        # What the edge accepts (edge.app._IDEMPOTENCY_KEY): 1-255 visible ASCII.
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "pattern": "^[\\x21-\\x7e]+$",
                        },
                    }
                )
            operation["responses"] = {
                str(r.status_code): {
                    "description": f"{r.reply_type.__name__}",
                    "content": {"application/json": {"schema": reply_ref}},
                },
                **{
                    status: {
                        "description": text,
                        "content": {"application/json": {"schema": error_ref}},
                    }
                    for status, text in _ERRORS.items()
                    if self._can_answer(r, status)
                },
            }
            if r.auth:
                uses_auth = True
                operation["security"] = [{"bearerAuth": []}]
        if uses_auth:
            doc["components"].setdefault("securitySchemes", {})["bearerAuth"] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
            }
        return doc

    @staticmethod
    def _can_answer(r: Route, status: str) -> bool:
        if status in ("401", "403"):
            return r.auth and (status == "401" or bool(r.roles))
        if status in ("400", "413"):
            return r.has_body or status == "400"
        return True
