"""Running the app under uvicorn with Beagle's connection limits and a prompt shutdown.

- **Idle connections**: a connection that has not sent a complete request head within
  ``idle_timeout`` seconds of connecting (or of its previous reply) is closed; uvicorn closes a
  keep-alive connection idle after a reply after ``KEEP_ALIVE_S``; a body that stalls is answered 408
  by :class:`~beagle.serving.guard.RequestGuard`.
- **Shutdown** (SIGTERM / SIGINT): :class:`GracefulServer` cancels the running and queued
  generations as soon as the shutdown starts (their clients get a "shutting down" error), so the
  process exits within a target pass or so instead of after the longest reply; anything still open
  after ``GRACEFUL_SHUTDOWN_S`` is cancelled by uvicorn.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

logger = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT_S = 15.0
KEEP_ALIVE_S = 5
GRACEFUL_SHUTDOWN_S = 5


def idle_timeout_protocol(base: type, timeout: float) -> type:
    """A subclass of uvicorn's HTTP protocol ``base`` that closes connections which send no request head
    within ``timeout`` seconds. (Slow heads — a byte at a time — count from their first byte.)"""

    class IdleTimeoutProtocol(base):
        idle_timeout = timeout

        def connection_made(self, transport) -> None:
            self._request_timer = None
            super().connection_made(transport)
            self._arm_request_timer()

        def data_received(self, data: bytes) -> None:
            if self._request_timer is None and self._waiting_for_request():
                self._arm_request_timer()
            super().data_received(data)

        def connection_lost(self, exc) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None
            super().connection_lost(exc)

        def _waiting_for_request(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or cycle.response_complete

        def _arm_request_timer(self) -> None:
            waiting_after = getattr(self, "cycle", None)
            self._request_timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._request_timeout,
                                                                         waiting_after)

        def _request_timeout(self, waiting_after) -> None:
            self._request_timer = None
            if getattr(self, "cycle", None) is waiting_after and not self.transport.is_closing():
                logger.info("closing a connection that sent no request in %.0f s", self.idle_timeout)
                self.transport.close()

    return IdleTimeoutProtocol


class GracefulServer(uvicorn.Server):
    """A uvicorn server that calls ``on_shutdown`` (cancel the generations) as soon as shutting down starts."""

    def __init__(self, config: uvicorn.Config, on_shutdown=None):
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets=None) -> None:
        if self.on_shutdown is not None:
            try:
                self.on_shutdown()
            except Exception:  # noqa: BLE001 - shutting down goes on regardless
                logger.exception("cancelling the running generations failed")
        await super().shutdown(sockets)


def server_config(app, host: str, port: int, *, log_level: str = "info",
                  idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S) -> uvicorn.Config:
    """uvicorn settings for ``app``: idle-connection timeout, keep-alive and graceful-shutdown bounds."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                          http=idle_timeout_protocol(AutoHTTPProtocol, idle_timeout),
                          timeout_keep_alive=min(KEEP_ALIVE_S, max(1, int(idle_timeout))),
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


def graceful_server(app, host: str, port: int, **options) -> GracefulServer:
    """A :class:`GracefulServer` for an app from :func:`~beagle.serving.app.create_app` (its worker is
    shut down when the server stops)."""
    worker = getattr(app.state, "worker", None)
    return GracefulServer(server_config(app, host, port, **options),
                          on_shutdown=worker.shutdown if worker is not None else None)
