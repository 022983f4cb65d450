"""Every call of the EmbeddingService runs inside one wrapper that bounds it and tracks it.

The wrapper (``guard_handlers``) replaces each generated method handler with one that:

* reads request messages as raw bytes and parses them itself, so malformed protobuf is
  INVALID_ARGUMENT with a short message (grpc's own deserializer fails as UNKNOWN and logs
  a traceback per call, a log flood for a hostile caller);
* registers unary methods as request streams (identical on the wire), so that a request
  that never completes is timed out too: grpc only calls a unary handler once the whole
  message has arrived, and would otherwise wait forever;
* ends a request stream that sends nothing for ``idle_stream_seconds``, charges each
  message's bytes to a per-call budget (``max_call_bytes``) and its memory cost to a
  server-wide one (``max_inflight_bytes``) as it arrives (RESOURCE_EXHAUSTED beyond
  either; the charge is returned when the call ends), and ends any call after
  ``max_call_seconds``;
* ends a response stream whose reader has not taken a message for ``idle_stream_seconds``
  (a stalled reader pins the prepared chunks) and caps open GetItemEmbeddings streams;
* runs the call under a ``CallLifetime`` (deadline + cancel flag, see
  ``server.call_lifetime``) that is ended when grpc cancels the handler, so work in worker
  threads stops and nothing is committed for a caller that was told the call failed.

``LiveCalls`` knows every running call, so shutdown can end them and wait for their worker
threads instead of letting them commit after the process was asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from server.call_lifetime import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    SHUTTING_DOWN,
    CallLifetime,
    running,
)

log = logging.getLogger(__name__)
MiB = 2**20
# When the last large stream has ended: grpc frees a cancelled call's receive buffers when
# its core call is destroyed, a little later than the handler ends, so trim more than once.
TRIM_DELAYS_SECONDS = (0.5, 2.0, 5.0)
# What a held request byte costs the process: the decoded blocks the call keeps plus the
# transport's receive buffers, freed but not yet returned by malloc while the stream runs
# (measured: 10 held 3.9 MB PushCooccurrence messages raised RSS by 72 MB, 1.85 × 39 MB).
# The server-wide budget counts this, so it bounds memory, not only wire bytes.
MEMORY_PER_WIRE_BYTE = 2


@dataclass(frozen=True)
class CallLimits:
    max_call_bytes: int = 64 * MiB
    max_inflight_bytes: int = 128 * MiB
    max_call_seconds: float = 3600.0
    idle_stream_seconds: float = 30.0
    max_open_pulls: int = 32
    commit_margin_seconds: float = 0.25


class ByteLedger:
    """Request bytes held by running calls, server-wide (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def charge(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def release(self, size: int) -> None:
        """Return a call's charge (on the event loop, as its handler ends). Once no stream
        holds request bytes, freed memory goes back to the OS a moment later: by then the
        ended call's frames, kept alive by its exception until grpc sent its status, are
        gone too."""
        with self._lock:
            self.held -= size
            idle = self.held == 0
        if idle and size >= MiB:
            loop = asyncio.get_running_loop()
            for delay in TRIM_DELAYS_SECONDS:
                loop.call_later(delay, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        if self.held == 0:
            gc.collect()  # frames of failed calls sit in exception/traceback cycles
            _return_freed_memory()


class LiveCalls:
    """The lifetimes of running calls and the worker threads still working for them."""

    def __init__(self) -> None:
        self._lifetimes: set[CallLifetime] = set()
        self._threads = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def add(self, lifetime: CallLifetime) -> None:
        with self._lock:
            self._lifetimes.add(lifetime)

    def discard(self, lifetime: CallLifetime) -> None:
        with self._lock:
            self._lifetimes.discard(lifetime)

    def end_all(self, code: str, message: str) -> int:
        with self._lock:
            lifetimes = list(self._lifetimes)
        for lifetime in lifetimes:
            lifetime.end(code, message)
        return len(lifetimes)

    def tracked(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` counted as a worker thread of a call while it runs."""

        def run(*args: Any) -> Any:
            with self._lock:
                self._threads += 1
            try:
                return function(*args)
            finally:
                with self._lock:
                    self._threads -= 1
                    self._idle.notify_all()

        return run

    def wait_for_threads(self, timeout: float) -> int:
        """Block until no worker thread runs (or ``timeout``); how many still run."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._threads and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            return self._threads


class CallGuard:
    """Builds the bounded handlers (one instance per server: it holds the shared budgets)."""

    def __init__(self, limits: CallLimits, live: LiveCalls) -> None:
        self.limits = limits
        self.live = live
        self.ledger = ByteLedger(limits.max_inflight_bytes)
        self.open_pulls = 0
        self.stopping = False

    # -- lifetimes ----------------------------------------------------------------------
    def _lifetime(self, context: grpc.aio.ServicerContext) -> CallLifetime:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.time() + remaining
        lifetime = CallLifetime(deadline, self.limits.commit_margin_seconds)
        if self.stopping:
            lifetime.end(SHUTTING_DOWN, "the server is shutting down")
        return lifetime

    # -- request reading ----------------------------------------------------------------
    async def _next_raw(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                        ) -> bytes | None:
        try:
            return await asyncio.wait_for(anext(requests), self.limits.idle_stream_seconds)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request message for {self.limits.idle_stream_seconds:g} s; the server "
                "ended the call")
            raise AssertionError("context.abort always raises") from None

    async def _parse(self, raw: bytes, message_type: type[Message],
                     context: grpc.aio.ServicerContext) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {message_type.DESCRIPTOR.full_name} message")

    async def _single(self, requests: AsyncIterator[bytes], message_type: type[Message],
                      context: grpc.aio.ServicerContext) -> Any:
        raw = await self._next_raw(requests, context)
        if raw is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request")
        if await self._next_raw(requests, context) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "a unary method takes exactly one request message")
        return await self._parse(raw, message_type, context)

    async def _stream(self, requests: AsyncIterator[bytes], message_type: type[Message],
                      context: grpc.aio.ServicerContext, held: list[int]
                      ) -> AsyncIterator[Any]:
        """Parsed request messages, each charged to the call's and the server's budgets."""
        limits = self.limits
        while True:
            raw = await self._next_raw(requests, context)
            if raw is None:
                return
            size = len(raw)
            if held[0] + size > limits.max_call_bytes:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the call's request messages exceed {limits.max_call_bytes} bytes; split "
                    "it into several calls")
            if not self.ledger.charge(MEMORY_PER_WIRE_BYTE * size):
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the server holds its limit of in-flight request bytes; retry with backoff")
            held[0] += size
            message = await self._parse(raw, message_type, context)
            del raw  # the parsed message holds its own copy
            yield message

    # -- handlers -----------------------------------------------------------------------
    def _single_response(self, behavior: Callable[..., Any], message_type: type[Message],
                         request_streaming: bool) -> Callable:
        """A bounded handler for a method with one response (unary or client stream)."""
        guard = self

        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                         ) -> Any:
            lifetime = guard._lifetime(context)
            guard.live.add(lifetime)
            held = [0]  # request bytes of a stream so far
            try:
                async with guard._time_limit(context, lifetime):
                    if request_streaming:
                        request = guard._stream(requests, message_type, context, held)
                    else:
                        request = await guard._single(requests, message_type, context)
                    with running(lifetime):
                        return await behavior(request, context)
            except asyncio.CancelledError:
                lifetime.end(CANCELLED, "the call was cancelled")
                raise
            finally:
                guard.live.discard(lifetime)
                guard.ledger.release(MEMORY_PER_WIRE_BYTE * held[0])

        return handle

    def _server_stream(self, behavior: Callable[..., Any], message_type: type[Message],
                       pull: bool = True) -> Callable:
        """``pull``: a GetItemEmbeddings stream, counted against ``max_open_pulls`` (the
        watch streams hold no prepared chunks and are not)."""
        guard = self
        limits = self.limits

        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Any]:
            lifetime = guard._lifetime(context)
            guard.live.add(lifetime)
            task = asyncio.current_task()
            ends_at = time.monotonic() + limits.max_call_seconds
            opened = False
            stall: asyncio.TimerHandle | None = None

            def stalled() -> None:  # the reader took nothing for idle_stream_seconds
                log.warning("ending a response stream whose reader stalled for %g s",
                            limits.idle_stream_seconds)
                lifetime.end(DEADLINE_EXCEEDED, "the reader stalled")
                if task is not None:
                    task.cancel()

            try:
                request = await guard._single(requests, message_type, context)
                if pull and guard.open_pulls >= limits.max_open_pulls:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"{limits.max_open_pulls} response streams are open, the server's "
                        "limit; retry with backoff")
                if pull:
                    guard.open_pulls += 1
                    opened = True
                with running(lifetime):
                    async for message in behavior(request, context):
                        if time.monotonic() > ends_at:
                            await context.abort(
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the call ran longer than the server's maximum of "
                                f"{limits.max_call_seconds:g} s")
                        stall = asyncio.get_running_loop().call_later(
                            limits.idle_stream_seconds, stalled)
                        yield message
                        stall.cancel()
            except asyncio.CancelledError:
                lifetime.end(CANCELLED, "the call was cancelled")
                raise
            finally:
                if stall is not None:
                    stall.cancel()
                if opened:
                    guard.open_pulls -= 1
                guard.live.discard(lifetime)

        return handle

    @contextlib.asynccontextmanager
    async def _time_limit(self, context: grpc.aio.ServicerContext, lifetime: CallLifetime
                          ) -> AsyncIterator[None]:
        """End the call after ``max_call_seconds`` (DEADLINE_EXCEEDED, nothing committed)."""
        seconds = self.limits.max_call_seconds
        scope = asyncio.timeout(seconds)
        try:
            async with scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise
            lifetime.end(DEADLINE_EXCEEDED, "the call ran past the server's maximum duration")
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the call ran longer than the server's maximum of {seconds:g} s")

    def handlers(self, handlers: dict[str, grpc.RpcMethodHandler], request_types: dict[str, Any]
                 ) -> dict[str, grpc.RpcMethodHandler]:
        """``handlers`` (by method name) rebuilt as bounded request-stream handlers."""
        out: dict[str, grpc.RpcMethodHandler] = {}
        for name, handler in handlers.items():
            message_type = request_types[name]
            if handler.response_streaming:
                assert handler.unary_stream is not None  # streaming RPCs are unary-stream
                out[name] = grpc.stream_stream_rpc_method_handler(
                    self._server_stream(handler.unary_stream, message_type,
                                        pull=name == "GetItemEmbeddings"),
                    response_serializer=handler.response_serializer)
            else:
                behavior = handler.stream_unary or handler.unary_unary
                assert behavior is not None
                out[name] = grpc.stream_unary_rpc_method_handler(
                    self._single_response(behavior, message_type, handler.request_streaming),
                    response_serializer=handler.response_serializer)
        return out


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``: gives freed heap pages back to the OS (None elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def _return_freed_memory() -> None:
    """After the last large request stream ends: glibc keeps freed message buffers in its
    arenas (its mmap threshold grows with freed sizes), so RSS would stay at the peak."""
    if _TRIM is not None:
        _TRIM(0)
