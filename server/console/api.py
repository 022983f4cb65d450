"""The web console's HTTP side, on the metrics port: ``/metrics`` (Prometheus, as before),
``/console/`` (one static page) and ``/console/api/...`` (JSON, read-only).

The page holds no data; every API call carries ``Authorization: Bearer <token>``, checked
against the same trainer and admin tokens as the gRPC service (either role may read), so
the console shows nothing the token's holder could not already read over gRPC. With no
tokens configured (auth off) the API is open, like the gRPC service. WSGI on a threading
server from the standard library: no web framework, the service's calls run directly.

API (GET only; errors are ``{"error": message}`` with 400/401/404/409/503):
  /console/api/catalogs                       every catalog: items, active version, versions
  /console/api/catalogs/<name>                the catalog, its versions and diagnostics
  /console/api/catalogs/<name>/similar?item=ID[&k=10&version=0&dim=0]
                                              nearest items of ID, with texts
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from server.config import ServerConfig
from server.errors import (
    Aborted,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from server.service.auth import Authenticator
from server.service.catalog_service import CatalogService
from server.stores.base import VersionRecord

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
# Each kind of ``server.errors`` as an HTTP status (the first of an error's classes found).
_HTTP: dict[type[ServiceError], str] = {
    InvalidArgument: "400 Bad Request", ResourceExhausted: "400 Bad Request",
    NotFound: "404 Not Found", FailedPrecondition: "409 Conflict", Aborted: "409 Conflict",
    Unavailable: "503 Service Unavailable", DataLoss: "500 Internal Server Error"}
_ROUTE = re.compile(r"/console/api/catalogs(?:/(?P<name>[^/]+)(?P<similar>/similar)?)?/?")
_HEADERS = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
_PAGE_HEADERS = [*_HEADERS, ("Content-Security-Policy",
                             "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                             "script-src 'self' 'unsafe-inline'; img-src 'self' data:")]


def console_authenticator(config: ServerConfig) -> Authenticator | None:
    """The gRPC service's tokens (either role may read); None when auth is off."""
    if not config.auth_enabled:
        return None
    return Authenticator(config.trainer_tokens, config.admin_tokens)


def _page() -> bytes:
    return resources.files("server.console").joinpath("static/index.html").read_bytes()


class Console:
    """The WSGI app: the console and ``metrics`` (another WSGI app) on one port."""

    def __init__(self, service: CatalogService, authenticator: Authenticator | None,
                 metrics: WsgiApp) -> None:
        self._service = service
        self._auth = authenticator
        self._metrics = metrics
        self._page = _page()

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics" or path.startswith("/metrics/"):
            return self._metrics(environ, start)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _json(start, "405 Method Not Allowed", {"error": "the console is read-only"})
        if path in ("/", "/console", "/console/"):
            if path != "/console/":
                start("302 Found", [("Location", "/console/"), *_HEADERS])
                return [b""]
            start("200 OK", [("Content-Type", "text/html; charset=utf-8"), *_PAGE_HEADERS])
            return [self._page]
        route = _ROUTE.fullmatch(path)
        if route is None:
            return _json(start, "404 Not Found", {"error": "no such page"})
        if self._auth is not None and self._auth.role_of(
                [("authorization", environ.get("HTTP_AUTHORIZATION", ""))]) is None:
            return _json(start, "401 Unauthorized", {"error": "a valid bearer token is needed"},
                         [("WWW-Authenticate", "Bearer")])
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        try:
            body = self._answer(route.group("name"), bool(route.group("similar")), query)
        except ServiceError as error:
            kind = next((k for k in type(error).__mro__ if k in _HTTP), None)
            status = _HTTP[kind] if kind is not None else "500 Internal Server Error"
            return _json(start, status, {"error": error.message})
        except ValueError:  # a malformed number in the query string
            return _json(start, "400 Bad Request",
                         {"error": "k, version and dim must be integers"})
        return _json(start, "200 OK", body)

    def _answer(self, name: str | None, similar: bool, query: dict[str, str]) -> Any:
        service = self._service
        if name is None:
            out = []
            for catalog in service.store.catalog_names():
                state = service.store.get_catalog(catalog)
                if state is not None:
                    out.append({"name": catalog, "item_count": state.item_count,
                                "active_version": state.active_version,
                                "encoder": asdict(state.encoder)})
            return {"catalogs": out}
        if similar:
            version, hits = service.similar(
                name, int(query.get("version", 0)), query.get("item", ""), None,
                int(query.get("k", 10)), int(query.get("dim", 0)), include_texts=True)
            row = int(service.store.find_rows(name, [query.get("item", "")])[0])
            text = service.texts(name, [row])[0] if row >= 0 else ""
            return {"version": version, "query": {"item_id": query.get("item"), "text": text},
                    "items": [asdict(hit) for hit in hits]}
        found = service.describe(name)
        return {"name": found.state.name, "item_count": found.state.item_count,
                "active_version": found.state.active_version,
                "encoder": asdict(found.state.encoder),
                "cooccurrence": asdict(found.totals),
                "versions": [_version(record) for record in found.versions]}


def _version(record: VersionRecord) -> dict[str, Any]:
    return {"version": record.version, "status": record.status, "dim": record.dim,
            "item_count": record.item_count, "parameters": record.parameters,
            "diagnostics": record.diagnostics, "created_at": record.created_at,
            "activated_at": record.activated_at, "fit_seconds": record.fit_seconds}


def _json(start: StartResponse, status: str, body: Any,
          extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = json.dumps(body, default=str).encode()
    start(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                   *_HEADERS, *(extra or [])])
    return [data]
