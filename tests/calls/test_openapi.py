"""The OpenAPI document (calls/openapi.yaml): valid OpenAPI 3.1, naming every /v1/ route and
method there is, its examples true to its schemas; served as JSON and rendered at /v1/docs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator

from access.rules import (
    Credential,
    CredentialKind,
    Denied,
    check_mint,
    forbidden,
    invalid_token,
    unauthorized,
)
from calls.openapi import (
    METHODS,
    openapi_document,
    operations,
    resolve,
    schema_fields,
    type_label,
    websockets,
)

CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


def routes(patterns: list[Any] | None = None, prefix: str = "/") -> Iterator[tuple[str, Any]]:
    """Every (path, view) of the URL map, includes flattened, Django's ``<type:name>`` written
    as OpenAPI's ``{name}``."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + CONVERTER.sub(r"{\1}", str(entry.pattern))
        if isinstance(entry, URLResolver):
            yield from routes(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            yield route, entry.callback


def check_mint_denial() -> Denied:
    """What a client secret gets from POST /v1/client_secrets."""
    try:
        check_mint(Credential(CredentialKind.CLIENT_SECRET, 1, "k", client_secret_id=2))
    except Denied as exc:
        return exc
    raise AssertionError("a client secret minted")


API_ROUTES = [(path, view) for path, view in routes() if path.startswith("/v1/")]


def test_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    errors = [str(e) for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_the_v1_routes_are_found() -> None:
    found = {path for path, _ in API_ROUTES}
    assert {"/v1/sessions", "/v1/sessions/{session_id}", "/v1/regions", "/v1/openapi.json",
            "/v1/docs"} <= found


@pytest.mark.parametrize(("path", "view"), API_ROUTES, ids=[p for p, _ in API_ROUTES])
def test_every_v1_route_and_method_is_documented(path: str, view: Any) -> None:
    item = openapi_document()["paths"].get(path)
    assert item is not None, f"{path} is routed but not in calls/openapi.yaml"
    methods = getattr(view, "api_methods", None)
    assert methods, f"{path}: API views use calls.cors.api_view (CORS, 405, OPTIONS)"
    documented = {m.upper() for m in METHODS if m in item}
    assert documented == set(methods), f"{path}: routed {methods}, documented {documented}"


def test_every_documented_path_is_routed() -> None:
    routed = {path for path, _ in routes()}
    assert set(openapi_document()["paths"]) <= routed


def _media_examples(document: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            bodies = [("request", resolve(op.get("requestBody", {}), document))]
            bodies += [(status, resolve(r, document)) for status, r in op["responses"].items()]
            for where, body in bodies:
                for media_type, media in body.get("content", {}).items():
                    if "example" in media:
                        yield (f"{method.upper()} {path} {where} {media_type}",
                               media.get("schema", {}), media["example"])


def test_examples_conform_to_their_schemas() -> None:
    document = openapi_document()
    examples = list(_media_examples(document))
    assert len(examples) >= 8
    for label, schema, example in examples:
        rooted = {**schema, "components": document["components"]}  # for "#/components/..." refs
        errors = [e.message for e in Draft202012Validator(rooted).iter_errors(example)]
        assert errors == [], label


def test_sdp_examples_are_offers_the_server_accepts() -> None:
    from calls.sdp import validate_offer
    from calls.views import parse_trickle_fragment

    post = openapi_document()["paths"]["/v1/sessions"]["post"]["requestBody"]["content"]
    validate_offer(post["application/sdp"]["example"])
    validate_offer(post["application/json"]["example"]["sdp"])
    patch = openapi_document()["paths"]["/v1/sessions/{session_id}"]["patch"]["requestBody"]
    assert parse_trickle_fragment(patch["content"]["application/trickle-ice-sdpfrag"]["example"])


@pytest.mark.parametrize("exc", [
    unauthorized(), invalid_token(), invalid_token("client secret expired"),
    invalid_token("malformed bearer token"), forbidden("not_owner", "x"),
    forbidden("region_forbidden", "this key may only place sessions in eu-west"),
    check_mint_denial(),
], ids=lambda exc: f"{exc.status}-{exc.code}")
def test_denials_are_as_documented(exc: Denied) -> None:
    """What ``calls.views.denied`` sends is the documented problem and WWW-Authenticate."""
    from calls.views import denied

    document = openapi_document()
    components = document["components"]
    name = "WWW-Authenticate" if exc.status == 401 else "WWW-Authenticate-Insufficient"
    response = denied(exc)
    assert re.search(components["headers"][name]["schema"]["pattern"],
                     response["WWW-Authenticate"])
    schema = {"$ref": "#/components/schemas/" + (
        "UnauthorizedProblem" if exc.status == 401 else "ForbiddenProblem"), **document}
    assert list(Draft202012Validator(schema).iter_errors(json.loads(response.content))) == []


# the page's shaping of the document (pure) ------------------------------------------------

DOC: dict[str, Any] = {"components": {"schemas": {
    "Thing": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string", "format": "uuid", "description": "its id"},
        "tags": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": ["string", "null"]}}}},
        "where": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
            "lat": {"type": "number"}}}]},
    }},
}}}


def test_type_labels() -> None:
    assert type_label({"type": "string", "format": "uuid"}, DOC) == "string (uuid)"
    assert type_label({"type": ["string", "null"]}, DOC) == "string | null"
    assert type_label({"enum": ["a", "b"]}, DOC) == "one of: a, b"
    assert type_label({"const": "offer"}, DOC) == '"offer"'
    assert type_label({"$ref": "#/components/schemas/Thing"}, DOC) == "Thing"
    assert type_label({"type": "array", "items": {"type": "integer"}}, DOC) == "array of integer"


def test_schema_fields_flatten_nested_objects_and_lists() -> None:
    fields = schema_fields({"$ref": "#/components/schemas/Thing"}, DOC)
    assert [(f.name, f.type, f.required) for f in fields] == [
        ("id", "string (uuid)", True),
        ("tags", "array of object", False),
        ("tags[].name", "string | null", False),
        ("where", "null | object", False),
        ("where.lat", "number", False),
    ]
    assert fields[0].description == "its id"


def test_all_of_parts_are_shown_as_one_object() -> None:
    doc = {"components": {"schemas": {**DOC["components"]["schemas"], "Narrow": {"allOf": [
        {"$ref": "#/components/schemas/Thing"},
        {"properties": {"id": {"const": "x"}, "extra": {"type": "integer"}}}]}}}}
    assert type_label({"$ref": "#/components/schemas/Narrow"}, doc) == "Narrow"
    fields = {f.name: f for f in schema_fields({"$ref": "#/components/schemas/Narrow"}, doc)}
    assert fields["id"].type == '"x"' and fields["id"].required
    assert fields["id"].description == "its id"
    assert fields["extra"].type == "integer" and "tags[].name" in fields


def test_operations_cover_every_documented_method() -> None:
    document = openapi_document()
    ops = operations(document)
    count = sum(1 for item in document["paths"].values() for m in METHODS if m in item)
    assert len(ops) == count
    post = next(op for op in ops if op.operation_id == "createSession")
    assert [b.media_type for b in post.request_bodies] == ["application/sdp", "application/json"]
    assert post.request_required
    created = next(r for r in post.replies if r.status == "201")
    assert {"Location", "ETag", "X-Region"} <= {h.name for h in created.headers}
    assert "bearer" in post.auth
    assert [s.path for s in websockets(document)] == ["/ws/sessions/{session_id}"]


# served ---------------------------------------------------------------------------------------

def test_openapi_json_is_served_with_cors(client: Client) -> None:
    response = client.get("/v1/openapi.json", HTTP_ORIGIN="https://app.example")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Access-Control-Allow-Origin"] == "*"
    assert json.loads(response.content) == openapi_document()
    assert client.options("/v1/openapi.json").status_code == 204
    assert client.post("/v1/openapi.json").status_code == 405


def test_docs_page_shows_every_operation_and_example(client: Client) -> None:
    response = client.get("/v1/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    for op in operations(openapi_document()):
        assert f'id="{op.operation_id}"' in page
    for needle in ("application/trickle-ice-sdpfrag", "a=ice-ufrag:Abcd", "Retry-After",
                   "/ws/sessions/{session_id}", "4404", "If-Match", "region_reason",
                   "relays[].state", "ice_restart_unsupported", "api_key_required",
                   "createClientSecret", "expires_after.seconds", "not_owner"):
        assert needle in page, needle
    assert "<script" not in page  # rendered here: nothing to fetch, nothing to run


def test_options_on_the_collection_names_what_post_accepts(client: Client) -> None:
    response = client.options("/v1/sessions")
    assert response.status_code == 204
    assert response["Accept-Post"] == "application/sdp, application/json"
    assert "Accept-Post" not in client.options("/v1/regions")
