"""Client address of a request: the TCP peer unless it is a trusted proxy."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory
from pytest_django.fixtures import Settings

from geo.checks import check_trusted_proxies
from geo.client_ip import client_ip_of, get_trusted_proxies


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", "49.36.10.10", "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", "49.36.10.10", "49.36.10.10"),  # loopback proxy is trusted by default
        ("127.0.0.1", "1.2.3.4, 49.36.10.10", "49.36.10.10"),  # left hops are client-written
        ("::1", "2a02:8084::1", "2a02:8084::1"),
        ("127.0.0.1", None, "127.0.0.1"),
    ],
)
def test_client_ip_of(peer: str, forwarded: str | None, expected: str) -> None:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded else {}
    request = RequestFactory().post("/v1/sessions", REMOTE_ADDR=peer, **headers)
    assert client_ip_of(request) == expected


def test_trusted_proxies_setting_is_honoured(settings: Settings) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    request = RequestFactory().post("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="49.36.1.1")
    assert client_ip_of(request) == "127.0.0.1"
    request = RequestFactory().post("/", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="49.36.1.1")
    assert client_ip_of(request) == "49.36.1.1"


def test_trusted_proxies_from_settings(settings: Settings) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert [str(n) for n in get_trusted_proxies()] == ["10.0.0.0/8"]
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "nonsense"]
    with pytest.raises(ImproperlyConfigured, match="^TRUSTED_PROXIES: bad trusted proxy CIDR"):
        get_trusted_proxies()
    (error,) = check_trusted_proxies()
    assert error.id == "geo.E002"
    settings.TRUSTED_PROXIES = ["::1/128"]
    assert check_trusted_proxies() == []
