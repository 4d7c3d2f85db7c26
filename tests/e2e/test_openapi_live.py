"""The OpenAPI document against a live edge (``manage.py up``): schemathesis loads it from
/v1/openapi.json over HTTP and, for every operation, sends the documented examples, then data
generated from the schema and data that breaks it, checking each answer: no 5xx, a documented
status, content type, body and headers. Twice: on an edge with authentication off (every
operation reachable anonymously), and on one with ``AUTH_REQUIRED=1``, without a token (the 401s
must be as documented) and with a real API key from ``manage.py apikey create``."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from calls.openapi import METHODS, openapi_document
from tests.e2e.conftest import LOCAL, ROOT, Edge, start_edge, stop_edge

pytestmark = [pytest.mark.e2e]
logger = logging.getLogger(__name__)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
PENDING_CAP = 3  # a client's sessions not yet connected (MAX_PENDING_PER_CLIENT)
MAX_EXAMPLES = 30  # per operation and generation mode: ~350 requests in all
# SDP bodies go on the wire as the text they are (schemathesis knows no SDP serializer).
schemathesis.serializer.alias(["application/sdp", "application/trickle-ice-sdpfrag"], "text/plain")


def _fuzz_edge(tmp: Any, redis_url: str, **extra: str) -> Edge:
    """An edge of its own, so that its sessions never meet another module's assertions. The
    fuzzer's offers all come from 127.0.0.1, faster than a stranger's: the offer rate limit is
    raised; the cap on a client's unconnected sessions is low (each 201 is hung up at once)."""
    running = start_edge(tmp, redis_url, json.loads(json.dumps(LOCAL)),
                         extra_env={"RATE_LIMIT_BURST": "1000", "RATE_LIMIT_PER_MINUTE": "60000",
                                    "MAX_PENDING_PER_CLIENT": str(PENDING_CAP), **extra})
    try:
        # A region with no relay and no transceiver: GET /v1/regions shows one that cannot
        # serve, and an offer pinned there is refused with 503 no_capacity.
        _manage(running, "shell", "-c", "from geo.services import region_upsert; region_upsert("
                "code='empty', name='Empty', latitude=10.0, longitude=10.0)")
    except BaseException:
        stop_edge(running)
        raise
    return running


def _manage(edge: Edge, *args: str) -> str:
    """``manage.py`` against ``edge``'s database and Redis; its output."""
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args],
                          env=edge.manage_env(), cwd=ROOT, check=True, timeout=60,
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def api_edge(tmp_path_factory: pytest.TempPathFactory,
             redis_dbs: Callable[[], str]) -> Iterator[Edge]:
    """Authentication off (``manage.py up``'s default): every operation reachable anonymously."""
    running = _fuzz_edge(tmp_path_factory.mktemp("openapi"), redis_dbs())
    yield running
    stop_edge(running)


def _place(edge: Edge, token: str | None = None) -> tuple[str, str]:
    """A session placed with the document's own example offer: (id, ETag)."""
    headers = {"Content-Type": "application/sdp", **_bearer(token)}
    response = requests.post(f"{edge.base_url}/v1/sessions", data=_offer().encode(),
                             headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    return response.headers["Location"].rsplit("/", 1)[-1], response.headers["ETag"]


def _bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def live_session(api_edge: Edge) -> tuple[str, str]:
    """A live session (id, ETag), so that GET, PATCH and DELETE meet a real session as well as
    unknown ids."""
    return _place(api_edge)


def _hooked_schema(edge: Edge, session: tuple[str, str]) -> Any:
    """The document as ``edge`` serves it, with hooks: path parameters are sometimes the live
    session's id, PATCH's If-Match sometimes its ETag and its body sometimes the example
    fragment, ``?region=`` sometimes the edge's own region (else 404, 428 and 400 would be all a
    fuzzer ever sees)."""
    session_id, etag = session
    patch = openapi_document()["paths"]["/v1/sessions/{session_id}"]["patch"]
    fragment = patch["requestBody"]["content"]["application/trickle-ice-sdpfrag"]["example"]
    schema = schemathesis.openapi.from_url(f"{edge.base_url}/v1/openapi.json", timeout=10)

    @schema.hook
    def before_generate_path_parameters(context: Any, strategy: Any) -> Any:
        return st.one_of(strategy, st.just({"session_id": session_id}))

    def is_patch(context: Any) -> bool:
        return context.operation is not None and context.operation.method.upper() == "PATCH"

    @schema.hook
    def before_generate_query(context: Any, strategy: Any) -> Any:
        if context.operation is None or context.operation.path != "/v1/sessions":
            return strategy
        return st.one_of(strategy, st.just({"region": "local"}))  # the edge's own region

    @schema.hook
    def before_generate_headers(context: Any, strategy: Any) -> Any:
        if not is_patch(context):
            return strategy
        return st.one_of(strategy, strategy.map(lambda h: {**(h or {}), "If-Match": etag}))

    @schema.hook
    def before_generate_body(context: Any, strategy: Any) -> Any:
        return st.one_of(strategy, st.just(fragment)) if is_patch(context) else strategy

    return schema


@pytest.fixture(scope="module")
def live_schema(api_edge: Edge, live_session: tuple[str, str]) -> Any:
    return _hooked_schema(api_edge, live_session)


def _check(case: Any, base_url: str, seen: Counter[int], token: str | None = None) -> None:
    """Send one case (with ``token``, when given, instead of any Authorization it carries) and
    run every check on the answer; hang up a session it created."""
    response = case.call_and_validate(base_url=base_url, headers=_bearer(token) or None,
                                      checks=CHECKS, timeout=15)
    seen[response.status_code] += 1
    if response.status_code == 201:  # a real session on the transceiver: hang it up now
        location = response.headers["location"][0]  # schemathesis: lower-case name -> values
        hangup = requests.delete(base_url + location, headers=_bearer(token), timeout=10)
        assert hangup.status_code == 200


def _run(strategy: Any, max_examples: int, base_url: str, seen: Counter[int],
         token: str | None = None) -> None:
    """One bounded, derandomized Hypothesis run (no shrinking: a live server is slow to shrink
    against, and the first failing case is reported as found)."""

    @given(case=strategy)
    @settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        _check(case, base_url, seen, token)

    run()


def _fuzz(schema: Any, method: str, path: str, base_url: str, per_mode: int,
          per_example: int, token: str | None = None) -> Counter[int]:
    """The operation's examples, then schema-valid and schema-breaking data: the statuses seen."""
    operation = schema[path][method]
    seen: Counter[int] = Counter()
    for example in schema.get_strategies_from_examples(operation):
        _run(example, per_example, base_url, seen, token)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        _run(operation.as_strategy(generation_mode=mode), per_mode, base_url, seen, token)
    logger.info("%s %s%s: %d requests, statuses %s", method, path,
                " (API key)" if token else "", sum(seen.values()), dict(sorted(seen.items())))
    return seen


def _successes(method: str, path: str) -> set[int]:
    documented = openapi_document()["paths"][path][method.lower()]["responses"]
    return {int(s) for s in documented if s.startswith("2")}


def _guarded(method: str, path: str) -> bool:
    """Does the operation take a Bearer token (required when AUTH_REQUIRED is on)?"""
    op = openapi_document()["paths"][path][method.lower()]
    return any("bearer" in requirement for requirement in op.get("security", []))


OPERATIONS = [(method.upper(), path) for path, item in openapi_document()["paths"].items()
              for method in METHODS if method in item]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_live_operation_conforms_to_the_document(live_schema: Any, api_edge: Edge, method: str,
                                                 path: str) -> None:
    seen = _fuzz(live_schema, method, path, api_edge.base_url, MAX_EXAMPLES, 3)
    success = _successes(method, path)
    if path == "/v1/client_secrets" and method == "POST":  # an API key only, even with auth off
        assert 401 in seen and not success & set(seen), seen
        return
    assert success & set(seen), f"never reached a documented success ({success}): {seen}"


def _offer() -> str:
    post = openapi_document()["paths"]["/v1/sessions"]["post"]
    return str(post["requestBody"]["content"]["application/sdp"]["example"])


def _validate(case: Any, base_url: str, status: int, code: str | None = None,
              token: str | None = None) -> Any:
    """Send a hand-made case expecting ``status`` (and problem ``code``); every check but "no
    5xx" when the 5xx is the point (503 no_capacity is a documented refusal). A 201's session is
    hung up (with ``token``)."""
    checks = CHECKS if status < 500 else [c for c in CHECKS if c is not not_a_server_error]
    response = case.call_and_validate(base_url=base_url, checks=checks, timeout=15)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code
    if status == 201:
        location = response.headers["location"][0]
        hangup = requests.delete(base_url + location, headers=_bearer(token), timeout=10)
        assert hangup.status_code == 200
    return response


def test_live_answers_and_refusals_conform(live_schema: Any, api_edge: Edge,
                                           live_session: tuple[str, str]) -> None:
    """The statuses random data seldom reaches, each sent on purpose and checked the same way."""
    base, offer = api_edge.base_url, _offer()
    post = live_schema["/v1/sessions"]["POST"]
    _validate(post.Case(body=offer, media_type="application/sdp"), base, 201)
    _validate(post.Case(body={"type": "offer", "sdp": offer}, media_type="application/json"),
              base, 201)
    _validate(post.Case(body=offer, media_type="text/plain"), base, 415, "unsupported")
    _validate(post.Case(body=offer + "a=x:" + "x" * 70_000 + "\r\n",
                        media_type="application/sdp"), base, 413, "too_large")
    _validate(post.Case(body={"type": "answer", "sdp": offer}, media_type="application/json"),
              base, 400, "bad_json")
    _validate(post.Case(body=offer, media_type="application/sdp", query={"region": "nowhere"}),
              base, 400, "unknown_region")
    _validate(post.Case(body=offer, media_type="application/sdp", query={"region": "nul\x00"}),
              base, 400, "unknown_region")
    unavailable = _validate(post.Case(body=offer, media_type="application/sdp",
                                      query={"region": "empty"}), base, 503, "no_capacity")
    assert int(unavailable.headers["retry-after"][0]) > 0

    session_id, etag = live_session
    patch = live_schema["/v1/sessions/{session_id}"]["PATCH"]
    fragment = "a=end-of-candidates\r\n"
    for if_match, status in ((etag, 204), ("*", 422), ('"0"', 412), (None, 428)):
        headers = {} if if_match is None else {"If-Match": if_match}
        _validate(patch.Case(path_parameters={"session_id": session_id}, headers=headers,
                             body=fragment, media_type="application/trickle-ice-sdpfrag"),
                  base, status)
    _validate(patch.Case(path_parameters={"session_id": session_id}, headers={"If-Match": etag},
                         body="a=candidate:x\r\n", media_type="application/trickle-ice-sdpfrag"),
              base, 400, "bad_sdpfrag")
    _validate(patch.Case(path_parameters={"session_id": session_id}, headers={"If-Match": etag},
                         body=fragment, media_type="text/plain"), base, 415, "unsupported")
    options = _validate(live_schema["/v1/sessions"]["OPTIONS"].Case(), base, 204)
    assert options.headers["accept-post"] == ["application/sdp, application/json"]
    regions = _validate(live_schema["/v1/regions"]["GET"].Case(), base, 200).json()["regions"]
    assert [(r["code"], r["status"]) for r in regions] == [("local", "ok"), ("empty", "no_relay")]


def test_live_pending_cap_is_429_with_retry_after(live_schema: Any, api_edge: Edge) -> None:
    """A client of its own (X-Forwarded-For from loopback, a trusted proxy) leaves PENDING_CAP
    sessions unconnected; its next offer is 429 too_many_pending. Then it hangs them up."""
    post = live_schema["/v1/sessions"]["POST"]
    headers = {"X-Forwarded-For": "198.51.100.77"}
    made = []
    for _ in range(PENDING_CAP):
        response = post.Case(body=_offer(), media_type="application/sdp",
                             headers=headers).call(base_url=api_edge.base_url)
        assert response.status_code == 201, response.text
        made.append(response.headers["location"][0])
    try:
        limited = _validate(post.Case(body=_offer(), media_type="application/sdp",
                                      headers=headers), api_edge.base_url, 429, "too_many_pending")
        assert int(limited.headers["retry-after"][0]) > 0
    finally:
        for location in made:
            requests.delete(api_edge.base_url + location, timeout=10)


def _no_live_sessions(edge: Edge) -> int:
    """Live sessions on ``edge``'s transceivers once hang-ups have settled (at most 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        regions = requests.get(f"{edge.base_url}/v1/regions", timeout=10).json()["regions"]
        live = sum(t["sessions"] for r in regions for t in r["transceivers"])
        if live == 0 or time.monotonic() > deadline:
            return live
        time.sleep(0.5)


def test_the_fuzzed_edge_is_left_without_live_sessions(api_edge: Edge,
                                                       live_session: tuple[str, str]) -> None:
    """Every session the run created was hung up (the fixture's own included)."""
    requests.delete(f"{api_edge.base_url}/v1/sessions/{live_session[0]}", timeout=10)
    assert _no_live_sessions(api_edge) == 0


# authentication on ------------------------------------------------------------------------------

AUTH_EXAMPLES = 8  # per operation, generation mode and token: the same checks, fewer requests


@pytest.fixture(scope="module")
def auth_edge(tmp_path_factory: pytest.TempPathFactory,
              redis_dbs: Callable[[], str]) -> Iterator[Edge]:
    """``AUTH_REQUIRED=1`` and no open demo: every WHIP operation needs a Bearer token."""
    running = _fuzz_edge(tmp_path_factory.mktemp("openapi-auth"), redis_dbs(),
                         AUTH_REQUIRED="1", DEMO_OPEN="0")
    yield running
    stop_edge(running)


def _new_key(edge: Edge, name: str, *options: str) -> str:
    """An API key made as an operator makes one (``manage.py apikey create`` prints it alone on
    its last line)."""
    return _manage(edge, "apikey", "create", name, *options).splitlines()[-1]


@pytest.fixture(scope="module")
def api_key(auth_edge: Edge) -> str:
    return _new_key(auth_edge, "openapi-fuzz")


@pytest.fixture(scope="module")
def auth_session(auth_edge: Edge, api_key: str) -> tuple[str, str]:
    """A live session of ``api_key`` on the authenticated edge."""
    return _place(auth_edge, api_key)


@pytest.fixture(scope="module")
def auth_schema(auth_edge: Edge, auth_session: tuple[str, str]) -> Any:
    return _hooked_schema(auth_edge, auth_session)


def test_live_auth_refusals_conform(auth_schema: Any, auth_edge: Edge, api_key: str,
                                    auth_session: tuple[str, str]) -> None:
    """Every documented 401 and 403, sent on purpose, with the challenge the document names."""
    base, offer = auth_edge.base_url, _offer()
    post, mint = auth_schema["/v1/sessions"]["POST"], auth_schema["/v1/client_secrets"]["POST"]
    bare = _validate(post.Case(body=offer, media_type="application/sdp"), base, 401,
                     "unauthorized")
    assert bare.headers["www-authenticate"] == ['Bearer realm="voice-edge"']
    unknown = _validate(post.Case(body=offer, media_type="application/sdp",
                                  headers=_bearer("ek_" + "A" * 43)), base, 401, "invalid_token")
    assert unknown.headers["www-authenticate"] == [
        'Bearer realm="voice-edge", error="invalid_token", '
        'error_description="unknown or revoked token"']
    _validate(mint.Case(headers={}), base, 401, "unauthorized")

    minted = _validate(mint.Case(body={"expires_after": {"seconds": 60}},
                                 media_type="application/json", headers=_bearer(api_key)),
                       base, 200).json()
    assert minted["expires_at"] - time.time() <= 61
    _validate(mint.Case(headers=_bearer(api_key)), base, 200)  # no body: the default lifetime
    _validate(mint.Case(body={"expires_after": {"seconds": 7201}}, media_type="application/json",
                        headers=_bearer(api_key)), base, 400, "bad_request")
    _validate(mint.Case(body="60", media_type="text/plain", headers=_bearer(api_key)), base, 415,
              "unsupported")
    secret = minted["value"]
    refused = _validate(mint.Case(headers=_bearer(secret)), base, 403, "api_key_required")
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"][0]
    _validate(post.Case(body=offer, media_type="application/sdp", headers=_bearer(secret)),
              base, 201, token=secret)  # a client secret creates sessions

    session = auth_schema["/v1/sessions/{session_id}"]
    other = _bearer(_new_key(auth_edge, "openapi-other"))
    where = {"session_id": auth_session[0]}
    _validate(session["GET"].Case(path_parameters=where, headers=other), base, 403, "not_owner")
    _validate(session["DELETE"].Case(path_parameters=where), base, 401, "unauthorized")
    confined = _bearer(_new_key(auth_edge, "openapi-local", "--region", "local"))
    _validate(post.Case(body=offer, media_type="application/sdp", query={"region": "empty"},
                        headers=confined), base, 403, "region_forbidden")


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_live_operation_conforms_with_authentication_on(auth_schema: Any, auth_edge: Edge,
                                                        api_key: str, method: str,
                                                        path: str) -> None:
    """(a) Without a token (or with the fuzzer's own, random one): every answer documented and
    no 5xx, and a guarded operation never succeeds; (b) with a real API key: its examples and
    generated data reach the documented success (201 session, 200 client secret); its
    negative cases include schemathesis's own "Authorization removed", answered 401."""
    base, success = auth_edge.base_url, _successes(method, path)
    anonymous = _fuzz(auth_schema, method, path, base, AUTH_EXAMPLES, 1)
    if not _guarded(method, path):  # OPTIONS, regions, this document, /healthz: no token
        assert success & set(anonymous), f"never reached ({success}): {anonymous}"
        return
    assert 401 in anonymous and not success & set(anonymous), anonymous
    keyed = _fuzz(auth_schema, method, path, base, AUTH_EXAMPLES, 2, token=api_key)
    assert success & set(keyed), f"never reached a documented success ({success}): {keyed}"


def test_the_authenticated_edge_is_left_without_live_sessions(
    auth_edge: Edge, api_key: str, auth_session: tuple[str, str]
) -> None:
    requests.delete(f"{auth_edge.base_url}/v1/sessions/{auth_session[0]}",
                    headers=_bearer(api_key), timeout=10)
    assert _no_live_sessions(auth_edge) == 0
