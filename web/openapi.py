"""OpenAPI 3.1 document generated from the code: every API view registers its
operation (path, models, responses) here, and the schemas come from the pydantic
models the views parse and render with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

import govpki

F = TypeVar("F", bound=Callable[..., Any])

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable dotted error code"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": ["string", "null"]}, "reason": {"type": "string"}},
                "required": ["field", "reason"],
            },
        },
    },
}


@dataclass(frozen=True)
class Response:
    description: str
    model: type[BaseModel] | None = None
    media: tuple[str, ...] = ("application/json",)


@dataclass(frozen=True)
class Parameter:
    name: str
    location: str  # "path" | "query" | "header"
    description: str
    schema: dict[str, Any]
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    operation_id: str
    tag: str
    body: type[BaseModel] | None = None
    responses: dict[int, Response] = field(default_factory=dict)
    parameters: tuple[Parameter, ...] = ()
    auth: bool = True
    security: str = "operatorToken"


OPERATIONS: list[Operation] = []


def operation(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    body: type[BaseModel] | None = None,
    responses: dict[int, Response] | None = None,
    parameters: tuple[Parameter, ...] = (),
    auth: bool = True,
    security: str = "operatorToken",
) -> Callable[[F], F]:
    def register(view: F) -> F:
        OPERATIONS.append(
            Operation(
                method.lower(), path, summary, view.__name__, tag, body, responses or {}, parameters, auth, security
            )
        )
        return view

    return register


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document(server_url: str) -> dict[str, Any]:
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        item: dict[str, Any] = {"summary": op.summary, "operationId": op.operation_id, "tags": [op.tag]}
        if op.parameters:
            item["parameters"] = [
                {
                    "name": p.name,
                    "in": p.location,
                    "description": p.description,
                    "required": p.required or p.location == "path",
                    "schema": p.schema,
                }
                for p in op.parameters
            ]
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(op.body, components)}},
            }
        responses: dict[str, Any] = {}
        for status, resp in sorted(op.responses.items()):
            entry: dict[str, Any] = {"description": resp.description}
            if resp.model is not None:
                ref = _schema(resp.model, components)
                entry["content"] = {
                    m: {"schema": ref if m == "application/json" else {"type": "string"}} for m in resp.media
                }
            elif resp.media and status < 300:
                entry["content"] = {m: {"schema": {"type": "string"}} for m in resp.media}
            responses[str(status)] = entry
        problem_ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for status, text in (
            (401, "Missing, malformed, expired or revoked API token"),
            (422, "Invalid input; `errors` names each field"),
        ):
            if status == 401 and not op.auth:
                continue
            responses.setdefault(str(status), {"description": text, "content": problem_ref})
        responses.setdefault("default", {"description": "Error (RFC 9457 problem details)", "content": problem_ref})
        item["responses"] = responses
        if op.auth:
            item["security"] = [{op.security: []}]
        paths.setdefault(op.path, {})[op.method] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "govpki API",
            "version": govpki.__version__,
            "description": "Certificate issuance and lookup for the e-government external network PKI.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "Operator API token (gpk_…)"},
                "applicationClient": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "A registered application's client_id and client_secret (client_secret_basic)",
                },
            },
        },
    }
