"""Running a relay: its forwarding listeners and its control API on one event loop, in the
foreground (``paroma relay run``) or on a background thread (tests, benchmarks, in-process use)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import uvicorn

from interconnect.relay.config import RelayConfig
from interconnect.relay.control import create_control_app
from interconnect.relay.relay import Relay

T = TypeVar("T")


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class RelayService:
    """A relay with its control API; ``run`` serves until ``stop``."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.relay = Relay(config.name, config.host, config.port)
        self._control_socket = _bind(config.control_host, config.control_port)
        self.control_port = int(self._control_socket.getsockname()[1])
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_control_app(self.relay, config.token),
                log_level="warning",
                lifespan="off",
                access_log=False,
                ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
                ssl_keyfile=str(config.tls_key) if config.tls_key else None,
            )
        )
        self._stopped: asyncio.Event | None = None

    @property
    def control_url(self) -> str:
        return f"{self.config.control_scheme}://{self.config.control_host}:{self.control_port}"

    async def run(self, ready: Callable[[RelayService], None] | None = None) -> None:
        self._stopped = asyncio.Event()
        await self.relay.start()
        control = asyncio.ensure_future(self._server.serve(sockets=[self._control_socket]))
        while not self._server.started and not control.done():
            await asyncio.sleep(0.01)
        if control.done():
            control.result()
        if ready is not None:
            ready(self)
        try:
            await self._stopped.wait()
        finally:
            self._server.should_exit = True
            await self.relay.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(control, 5)

    def stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()


def run_relay(config: RelayConfig, ready: Callable[[RelayService], None] | None = None) -> None:
    """Serve in the foreground until SIGTERM or SIGINT."""

    async def main() -> None:
        service = RelayService(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run(ready)

    asyncio.run(main())


class BackgroundRelay:
    """A relay on its own thread and event loop (a context manager)."""

    def __init__(self, config: RelayConfig) -> None:
        self.service = RelayService(config)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"relay-{config.name}", daemon=True)
        self._error: BaseException | None = None

    @property
    def relay(self) -> Relay:
        return self.service.relay

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.service.run(lambda _s: self._ready.set()))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def start(self) -> BackgroundRelay:
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"relay {self.service.config.name} did not start: {self._error!r}")
        return self

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 10) -> T:
        """Run a coroutine on the relay's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(_await(fn), self._loop).result(timeout)

    def stop(self, *, wait: bool = True) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self.service.stop)
            if wait:
                self._thread.join(10)

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundRelay:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_all(relays: list[BackgroundRelay]) -> None:
    """Stop several relays at once (each takes a moment to close its control API)."""
    for relay in relays:
        relay.stop(wait=False)
    for relay in relays:
        relay.join()


async def _await(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()
