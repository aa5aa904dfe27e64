"""The first thing every HTTP request meets, API and UI alike: a pure ASGI middleware.

It runs before routing, body parsing and auth, so what it refuses costs the server almost nothing:

1. the ``Host`` header must name this server (a loopback name, the address the connection arrived on,
   ``public_url``'s host or an ``allowed_hosts`` entry): a DNS-rebinding page cannot drive a loopback
   app, and the UI's root URL can only ever be built from a host the settings allow;
2. the users file must be readable once users have existed (503 otherwise, see ``web.auth``), and
   single-user mode answers loopback clients on a loopback bind only, at run time as at start;
3. the body is counted as it arrives (``Content-Length`` or chunked alike) and cut off at
   ``max_request_bytes`` with a 413, so a hostile body never sits in memory whole.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from web.auth import UsersUnavailable, client_address
from web.net import is_loopback, is_wildcard

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header, lower-cased, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def _reply(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                                 "param": None, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, settings, users, metrics=None):
        self.app = app
        self.settings = settings
        self.users = users
        self.metrics = metrics
        self.limit = settings.max_request_bytes
        allowed = {"localhost", "127.0.0.1", "::1", *(h.lower() for h in settings.allowed_hosts)}
        if settings.public_url:
            allowed.add((urlsplit(settings.public_url).hostname or "").lower())
        if not is_wildcard(settings.host):
            allowed.add(settings.host.lower())
        self.any_host = "*" in allowed
        self.allowed_hosts = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("", 0))[0]
        token = client_address.set(client)
        try:
            refusal = self._refusal(scope, client)
            if refusal is not None:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                if self.metrics is not None:
                    self.metrics.http_errors.labels(str(refusal[0])).inc()
                return await _reply(send, *refusal)
            # Gradio builds its root URL from X-Forwarded-Host before Host; neither may come from a client.
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"x-forwarded-host"]}
            if scope["type"] == "http":
                return await self._limited(scope, receive, send)
            return await self.app(scope, receive, send)
        finally:
            client_address.reset(token)

    def _refusal(self, scope, client: str) -> tuple[int, str, str] | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host")
        if host is not None and not self.any_host:
            name = _host_name(host.decode("latin-1"))
            server = (scope.get("server") or ("",))[0]
            if name not in self.allowed_hosts and name != str(server).lower():
                log.warning("refused a request for host %r from %s: not in allowed_hosts", name, client)
                return 400, "unknown_host", ("this server does not answer to that Host; set public_url or "
                                             "allowed_hosts to the name clients use")
        try:
            single = self.users.single_user
        except UsersUnavailable as exc:
            return 503, "users_unavailable", str(exc)
        if single and not (is_loopback(self.settings.host) and is_loopback(client)):
            log.error("refused a request from %s: no users are configured, so only loopback is served (bind %s)",
                      client, self.settings.host)
            return 503, "single_user_loopback_only", ("no users are configured, so this server only answers "
                                                      "loopback clients on a loopback address; add an admin user")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return 400, "invalid_request", "invalid Content-Length header"
            if n > self.limit:
                return 413, "request_too_large", f"request body over {self.limit} bytes"
        return None

    async def _limited(self, scope, receive, send):
        received = 0
        exceeded = False
        started = False

        async def counted_receive():
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:  # the app's own answer to a cut-off body (a 400 or 500) is replaced by the 413
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            log.warning("refused a request body over %d bytes from %s %s", self.limit,
                        (scope.get("client") or ("",))[0], scope.get("path"))
            if self.metrics is not None:
                self.metrics.http_errors.labels("413").inc()
            await _reply(send, 413, "request_too_large", f"request body over {self.limit} bytes")
