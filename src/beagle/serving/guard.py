"""What every request passes before it reaches an endpoint (a pure ASGI middleware, so it also covers
unknown paths and methods, and never buffers a streamed reply).

In this order:

1. **Host** (400 ``host_not_allowed``): exactly one ``Host`` header, of the strict form ``name[:port]``
   (a DNS name, an IPv4 address or a bracketed IPv6 address; a decimal port), naming the address the
   server is bound to: ``127.0.0.1:8000, evil.com`` or a second Host header is refused. Bound to loopback: ``localhost``, ``127.0.0.1`` and ``[::1]`` (any port); bound to all
   interfaces (``0.0.0.0`` / ``::``): any IP literal, ``localhost`` and this machine's host name;
   otherwise the bound address; plus every ``--allowed-host`` (``*`` turns the check off). A page
   in a browser that rebinds its own domain name to 127.0.0.1 sends that name, so it cannot read
   replies of a local server (DNS rebinding).
2. **API key** (401), when one is set: ``Authorization: Bearer KEY`` on every path.
3. **Content type** (415): a body sent with POST / PUT / PATCH must be ``application/json``. Browsers
   send ``text/plain`` forms cross-origin without a CORS preflight; they cannot send JSON that way.
4. **Body size** (413): a declared ``Content-Length`` over the limit is refused before anything is
   read; a chunked body is counted as it arrives and refused once over.
5. **Stalled body** (408): a request body that stops arriving for ``body_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass

from starlette.responses import JSONResponse

from beagle.serving.schemas import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_name(value: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'; '127.0.0.1' -> '127.0.0.1'."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        value = value[1:end] if end > 0 else value[1:]
    elif value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    return value.rstrip(".")


_HOST_FORM = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?))"
                        r"(?::(?P<port>[0-9]{1,5}))?")


def parse_host(value: str) -> str | None:
    """The host of a ``Host`` header in its strict form ``name[:port]`` (lowercase, no trailing dot), or
    None when the header is anything else (a list, spaces, user info, a path, a bad port or IPv6)."""
    match = _HOST_FORM.fullmatch(value.lower())
    if match is None or (match.group("port") is not None and not 0 < int(match.group("port")) < 65536):
        return None
    if match.group("ipv6") is not None:
        try:
            if ipaddress.ip_address(match.group("ipv6")).version != 6:
                return None
        except ValueError:
            return None
        return match.group("ipv6")
    return match.group("name").rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    name = host_name(host) if host.startswith("[") else host.strip().lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """The Host header values a server accepts: ``names``, and every IP literal when ``any_ip``."""

    names: frozenset[str]
    any_ip: bool = False

    def allows(self, header: str | None) -> bool:
        if header is None:  # HTTP/1.0 without Host: not something a browser sends
            return True
        name = parse_host(header)
        return name is not None and (name in self.names or (self.any_ip and _is_ip(name)))

    @classmethod
    def for_bind(cls, bind_host: str, allowed: tuple[str, ...] | list[str] = ()) -> "HostPolicy | None":
        """The policy of a server bound to ``bind_host``, widened by ``allowed`` (None when it holds '*')."""
        extra = [host_name(name) for name in allowed if name.strip()]
        if "*" in extra:
            return None
        bind = bind_host.strip().lower()
        names = set(extra)
        if bind in WILDCARD_BINDS:
            names |= {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
            return cls(frozenset(names), any_ip=True)
        names.add(host_name(bind) if bind.startswith("[") else bind)
        if is_loopback(bind):
            names |= LOOPBACK_NAMES
        return cls(frozenset(names))


class RequestGuard:
    """ASGI middleware enforcing the checks of the module docstring on every HTTP request."""

    def __init__(self, app, *, api_key: str | None, hosts: HostPolicy | None, max_body_bytes: int,
                 body_timeout: float):
        self.app = app
        self.expected_key = api_key.encode() if api_key else None
        self.hosts = hosts
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {}
        hosts = 0
        for name, value in scope.get("headers", ()):
            key = name.decode("latin-1").lower()
            hosts += key == "host"
            headers.setdefault(key, value.decode("latin-1"))
        try:
            if hosts > 1 and self.hosts is not None:
                raise ApiError(400, "the request has more than one Host header", code="host_not_allowed")
            self._check(scope, headers)
        except ApiError as error:
            await _reply(error, scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _check(self, scope, headers: dict[str, str]) -> None:
        host = headers.get("host")
        if self.hosts is not None and not self.hosts.allows(host):
            name = parse_host(host or "")
            if name is None:
                raise ApiError(400, f"the Host header {host!r} is not of the form name[:port]", code="host_not_allowed")
            raise ApiError(400, f"the Host header {host!r} is not one this server answers to; start it with "
                                f"--allowed-host {name} to accept it", code="host_not_allowed")
        if self.expected_key is not None:
            _check_api_key(headers.get("authorization", ""), self.expected_key)
        if scope["method"] in BODY_METHODS:
            declared = headers.get("content-length")
            has_body = headers.get("transfer-encoding") is not None or (declared not in (None, "0"))
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if has_body and media_type != "application/json":
                raise ApiError(415, f"send the request body as JSON with 'Content-Type: application/json' "
                                    f"(got {media_type or 'no content type'!r})", code="unsupported_media_type")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise ApiError(413, self._too_large(), code="request_too_large")

    def _too_large(self) -> str:
        return (f"the request body exceeds this server's limit of {self.max_body_bytes} bytes "
                f"({self.max_body_bytes / 2**20:g} MiB, --max-body-mib)")

    def _limited(self, receive):
        received = 0
        complete = False

        async def limited_receive():
            nonlocal received, complete
            if complete:  # the body is in: what follows is the disconnect, which may take any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, f"the request body stalled for {self.body_timeout:g} s", code="timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise ApiError(413, self._too_large(), code="request_too_large")
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return limited_receive


def _check_api_key(header: str, expected: bytes) -> None:
    scheme, _, token = header.partition(" ")
    if not header:
        raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected):
        raise ApiError(401, "incorrect API key", code="invalid_api_key")


async def _reply(error: ApiError, scope, receive, send) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if error.status in (408, 413, 415):
        headers["Connection"] = "close"  # the unread body makes the connection unusable
    response = JSONResponse(error.body(), status_code=error.status, headers=headers)
    await response(scope, receive, send)
