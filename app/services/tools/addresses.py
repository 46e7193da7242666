"""The SSRF guard: which webhook hosts and resolved addresses a worker may connect to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the IP addresses a connection would use."""

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}


class AddressRefused(ValueError):
    """A URL or address a webhook may not reach; the message says why, for a 422 or a tool error."""


@dataclass(frozen=True)
class WebhookUrl:
    """A checked webhook URL split into the parts a pinned connection needs."""

    url: str
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        """Host header value: the name the URL gave, with the port only when it is not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_allowed_hosts(value: str | Iterable[str] | None) -> frozenset[str]:
    """WEBHOOK_ALLOWED_HOSTS: a comma-separated string (or list) of host names or IPs, case-insensitive."""
    if value is None:
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    return frozenset(item.strip().lower().strip("[]") for item in items if item.strip())


def forbidden_reason(address: str) -> str | None:
    """Why an IP address is off limits (loopback, private, link-local and other non-public ranges), else None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if hit:
            return label
    return None


def _literal_ip(host: str) -> str | None:
    """The host as a normalised IP address if it is one."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def parse_url(url: str, allowed_hosts: frozenset[str]) -> WebhookUrl:
    """Check a webhook URL without DNS: http(s), a host, no credentials, and no refused literal address."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"url is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise AddressRefused("url must be an http or https URL")
    host = (parts.hostname or "").lower()
    if not host:
        raise AddressRefused("url has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("url must not carry credentials")
    if host not in allowed_hosts:
        literal = _literal_ip(host)
        if literal is not None and (reason := forbidden_reason(literal)):
            raise AddressRefused(f"url host {host} is a {reason} address (not in WEBHOOK_ALLOWED_HOSTS)")
        if host == "localhost" or host.endswith(".localhost"):
            raise AddressRefused(f"url host {host} is a loopback name (not in WEBHOOK_ALLOWED_HOSTS)")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookUrl(url=url, scheme=scheme, host=host, port=port or DEFAULT_PORTS[scheme], target=target)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for a TCP connection to host:port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(target: WebhookUrl, allowed_hosts: frozenset[str], resolver: Resolver = system_resolver) -> str:
    """The one address to connect to, after DNS; refused if any answer is off limits (no rebinding to pick)."""
    literal = _literal_ip(target.host)
    try:
        addresses = [literal] if literal is not None else resolver(target.host, target.port)
    except OSError as exc:
        raise ConnectionError(f"cannot resolve {target.host}: {exc}") from None
    if not addresses:
        raise ConnectionError(f"cannot resolve {target.host}: no addresses")
    if target.host not in allowed_hosts:
        for address in addresses:
            if address.lower() in allowed_hosts:
                continue
            if reason := forbidden_reason(address):
                raise AddressRefused(
                    f"{target.host} resolves to {address}, a {reason} address (not in WEBHOOK_ALLOWED_HOSTS)"
                )
    return addresses[0]
