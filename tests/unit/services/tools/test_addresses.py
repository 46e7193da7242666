"""The SSRF guard's pure parts: URL checks without DNS, address classes, allowed hosts."""

from __future__ import annotations

import pytest

from app.services.tools.addresses import (
    AddressRefused,
    forbidden_reason,
    parse_allowed_hosts,
    parse_url,
    resolve_checked,
)


@pytest.mark.parametrize(
    ("address", "reason"),
    [("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.0.0.1", "private"), ("172.16.5.4", "private"),
     ("192.168.1.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
     ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
     ("100.64.0.1", "non-public"), ("fc00::1", "private"), ("93.184.216.34", None), ("2606:4700::1", None)],
)
def test_address_classes(address: str, reason: str | None) -> None:
    assert forbidden_reason(address) == reason


def test_allowed_hosts_parse() -> None:
    assert parse_allowed_hosts(" 127.0.0.1, Hooks.Internal ,,[::1]") == {"127.0.0.1", "hooks.internal", "::1"}
    assert parse_allowed_hosts(None) == frozenset()
    assert parse_allowed_hosts(["a"]) == {"a"}


def test_parse_url_parts() -> None:
    url = parse_url("https://Tools.Example.com/v1/hook?a=b", frozenset())
    assert (url.scheme, url.host, url.port, url.target, url.host_header) == (
        "https", "tools.example.com", 443, "/v1/hook?a=b", "tools.example.com")
    assert parse_url("http://[2606:4700::1]:8080", frozenset()).host_header == "[2606:4700::1]:8080"
    assert parse_url("http://127.0.0.1:9/x", frozenset({"127.0.0.1"})).port == 9


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x", "http://", "http://a:99999/",
                                 "http://127.1.2.3/", "http://localhost/", "http://api.localhost/",
                                 "http://u@example.com/", "not a url"])
def test_parse_url_refusals(url: str) -> None:
    with pytest.raises(AddressRefused):
        parse_url(url, frozenset())


def test_resolution_failures_are_connection_errors() -> None:
    def failing(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    with pytest.raises(ConnectionError):
        resolve_checked(parse_url("http://nowhere.example/", frozenset()), frozenset(), failing)
    with pytest.raises(ConnectionError):
        resolve_checked(parse_url("http://nowhere.example/", frozenset()), frozenset(), lambda host, port: [])
