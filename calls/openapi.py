"""The API's OpenAPI 3.1 document (``calls/openapi.yaml``, kept by hand), loaded once, and the
plain rows the ``/v1/docs`` page renders from it: operations, parameters, bodies, responses."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DOCUMENT = Path(__file__).with_name("openapi.yaml")
METHODS = ("get", "put", "post", "patch", "delete", "options", "head", "trace")  # OAS 3.1 §4.8.9
MAX_DEPTH = 6  # nesting shown on the page; deeper properties are left to the JSON document


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document as a dict (read on first use; a malformed file fails loudly here)."""
    loaded = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict) or "openapi" not in loaded:
        raise ValueError("calls/openapi.yaml is not an OpenAPI document")
    return loaded


@functools.cache
def openapi_json() -> bytes:
    """The document as served at ``/v1/openapi.json``."""
    return json.dumps(openapi_document(), indent=1).encode()


def resolve(node: Any, document: dict[str, Any]) -> Any:
    """``node`` with a local ``$ref`` (``#/components/...``) followed, repeatedly."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 16:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node, seen = target, seen + 1
    return node


def merged(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``allOf`` parts folded in (as the page shows it: a property named by
    several parts gets every part's keywords, later ones winning)."""
    if "allOf" not in schema:
        return schema
    flat = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in schema["allOf"]:
        part = merged(resolve(part, document), document)
        for name, prop in part.get("properties", {}).items():
            properties[name] = {**resolve(properties.get(name, {}), document),
                                **resolve(prop, document)}
        required += [name for name in part.get("required", []) if name not in required]
        flat.setdefault("type", part.get("type"))
    return {**flat, "properties": properties, "required": required}


def type_label(schema: Any, document: dict[str, Any]) -> str:
    """A short human label for a schema: ``string (uuid)``, ``integer | null``, ``one of: a, b``."""
    if not isinstance(schema, dict):
        return "any"
    name = schema["$ref"].rsplit("/", 1)[-1] if "$ref" in schema else ""
    schema = merged(resolve(schema, document), document)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of: " + ", ".join(str(v) for v in schema["enum"])
    if "oneOf" in schema or "anyOf" in schema:
        return " | ".join(type_label(s, document) for s in schema.get("oneOf", schema.get("anyOf")))
    kinds = schema.get("type", "object" if "properties" in schema else "any")
    label = " | ".join(kinds) if isinstance(kinds, list) else str(kinds)
    if label == "array":
        label = f"array of {type_label(schema.get('items'), document)}"
    if "format" in schema:
        label += f" ({schema['format']})"
    if name and label == "object":
        label = name
    return label


@dataclass(frozen=True, slots=True)
class Field:
    """One named thing on the page: a parameter, header or (nested) body property."""

    name: str
    type: str
    required: bool
    description: str
    where: str = ""  # a parameter's location: path, query, header


def _object_variant(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    """The object a schema describes, looking through ``allOf`` and ``oneOf``/``anyOf`` (e.g.
    object | null)."""
    schema = merged(schema, document)
    if "properties" in schema:
        return schema
    for option in schema.get("oneOf", schema.get("anyOf", [])):
        option = resolve(option, document)
        if isinstance(option, dict) and "properties" in option:
            return option
    return None


def schema_fields(schema: Any, document: dict[str, Any], prefix: str = "",
                  depth: int = 0) -> list[Field]:
    """Every property of an object schema, nested ones as ``parent.child`` / ``list[].child``."""
    schema = resolve(schema, document)
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return []
    if schema.get("type") == "array":
        return schema_fields(schema.get("items"), document, f"{prefix.removesuffix('.')}[].",
                             depth + 1)
    variant = _object_variant(schema, document)
    if variant is None:
        return []
    required = set(variant.get("required", []))
    fields: list[Field] = []
    for name, prop in variant["properties"].items():
        resolved = resolve(prop, document)
        description = str(prop.get("description") or resolved.get("description", ""))
        fields.append(Field(prefix + name, type_label(prop, document), name in required,
                            description))
        fields.extend(schema_fields(resolved, document, f"{prefix}{name}.", depth + 1))
    return fields


def example_text(value: Any) -> str:
    """An example as shown: text as is (SDP), anything else as indented JSON."""
    return value if isinstance(value, str) else json.dumps(value, indent=2)


@dataclass(frozen=True, slots=True)
class Body:
    """One media type of a request or response body."""

    media_type: str
    type: str
    fields: tuple[Field, ...]
    example: str


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented response of an operation."""

    status: str
    description: str
    headers: tuple[Field, ...]
    bodies: tuple[Body, ...]


@dataclass(frozen=True, slots=True)
class Operation:
    """One path + method as the docs page shows it."""

    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    auth: str
    parameters: tuple[Field, ...]
    request_required: bool
    request_bodies: tuple[Body, ...]
    replies: tuple[Reply, ...]


def _bodies(content: dict[str, Any], document: dict[str, Any]) -> tuple[Body, ...]:
    bodies = []
    for media_type, media in content.items():
        example = media.get("example")
        if example is None and media.get("examples"):
            example = resolve(next(iter(media["examples"].values())), document).get("value")
        bodies.append(Body(media_type, type_label(media.get("schema"), document),
                           tuple(schema_fields(media.get("schema"), document)),
                           "" if example is None else example_text(example)))
    return tuple(bodies)


def _parameter(param: Any, document: dict[str, Any]) -> Field:
    param = resolve(param, document)
    return Field(param["name"], type_label(param.get("schema"), document),
                 bool(param.get("required")), str(param.get("description", "")), param["in"])


def _reply(status: str, response: Any, document: dict[str, Any]) -> Reply:
    response = resolve(response, document)
    headers = []
    for name, header in response.get("headers", {}).items():
        header = resolve(header, document)
        headers.append(Field(name, type_label(header.get("schema"), document),
                             bool(header.get("required")), str(header.get("description", ""))))
    return Reply(status, str(response.get("description", "")), tuple(headers),
                 _bodies(response.get("content", {}), document))


def _auth(security: list[dict[str, Any]]) -> str:
    schemes = sorted({name for requirement in security for name in requirement})
    if not schemes:
        return "none"
    optional = any(not requirement for requirement in security)
    return ", ".join(schemes) + (" (where the operator requires it)" if optional else "")


def operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation of ``document`` in its path order, ready for the template."""
    found = []
    for path, item in document.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = resolve(op.get("requestBody", {}), document)
            found.append(Operation(
                method=method.upper(), path=path, operation_id=str(op.get("operationId", "")),
                summary=str(op.get("summary", "")), description=str(op.get("description", "")),
                auth=_auth(op.get("security", document.get("security", []))),
                parameters=tuple(_parameter(p, document) for p in [*shared,
                                                                    *op.get("parameters", [])]),
                request_required=bool(body.get("required")),
                request_bodies=_bodies(body.get("content", {}), document),
                replies=tuple(_reply(str(s), r, document) for s, r in op["responses"].items()),
            ))
    return found


@dataclass(frozen=True, slots=True)
class Socket:
    """A WebSocket endpoint of the ``x-websockets`` extension (OpenAPI has no WebSocket)."""

    path: str
    summary: str
    description: str
    messages: tuple[tuple[str, tuple[Field, ...]], ...]  # (label, fields) per message kind
    close_codes: tuple[tuple[str, str], ...]


def websockets(document: dict[str, Any]) -> list[Socket]:
    """The document's ``x-websockets`` entries, for the page."""
    sockets = []
    for path, item in document.get("x-websockets", {}).items():
        messages = tuple(
            (str(resolve(m, document).get("properties", {}).get("type", {}).get("const", "")),
             tuple(schema_fields(m, document)))
            for m in item.get("messages", [])
        )
        sockets.append(Socket(path, str(item.get("summary", "")),
                              str(item.get("description", "")), messages,
                              tuple((str(c), str(t)) for c, t in
                                    item.get("closeCodes", {}).items())))
    return sockets
