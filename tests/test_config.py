"""Server configuration: flags, TFLLMER_* variables, defaults, validation and redaction."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from protos.environment import DATA_DIR as DATA_DIR_ENV
from protos.environment import SERVER as SERVER_ENV
from protos.environment import TOKEN as TOKEN_ENV
from server import config as config_module
from server.config import ConfigError, ServerConfig, config_from_dict, load_config, markdown_table
from server.settings import env_name, flag_name

FIELD_NAMES = [f.name for f in dataclasses.fields(ServerConfig)]
TRAINER_TOKEN = "trainer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
OTHER_ADMIN_TOKEN = "admin-token-fedcba9876543210"


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    """Stand-ins for the TLS files: the config checks that they exist, not their contents."""
    paths = {}
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
        paths[name] = str(path)
    return paths


@pytest.fixture
def non_defaults(pem_files: dict[str, str]) -> dict[str, tuple[str, object]]:
    """For every setting, a valid non-default value as text and as the parsed value; together
    they form one valid configuration. A new setting must be added here."""
    return {
        "host": ("0.0.0.0", "0.0.0.0"),
        "port": ("6000", 6000),
        "store_url": ("redis://:hunter2@redis:6379/0", "redis://:hunter2@redis:6379/0"),
        "raw_store_url": ("s3://key:hunter2@bucket/raw", "s3://key:hunter2@bucket/raw"),
        "raw_vector_dtype": ("float16", "float16"),
        "encoder_backend": ("openai", "openai"),
        "model": ("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5"),
        "encoder_device": ("cuda", "cuda"),
        "encoder_output": ("normalized", "normalized"),
        "encode_batch_tokens": ("4096", 4096),
        "max_text_chars": ("2000", 2000),
        "openai_base_url": ("http://tei:8080/v1", "http://tei:8080/v1"),
        "openai_api_key": ("sk-secret-openai-key", "sk-secret-openai-key"),
        "openai_timeout_seconds": ("12.5", 12.5),
        "trainer_tokens": (TRAINER_TOKEN, (TRAINER_TOKEN,)),
        "admin_tokens": (
            f"{ADMIN_TOKEN},{OTHER_ADMIN_TOKEN}",
            (ADMIN_TOKEN, OTHER_ADMIN_TOKEN),
        ),
        "allow_unauthenticated": ("false", False),
        "tls_cert": (pem_files["tls_cert"], pem_files["tls_cert"]),
        "tls_key": (pem_files["tls_key"], pem_files["tls_key"]),
        "tls_client_ca": (pem_files["tls_client_ca"], pem_files["tls_client_ca"]),
        "max_receive_message_bytes": ("8388608", 8388608),
        "max_send_message_bytes": ("2097152", 2097152),
        "default_chunk_bytes": ("524288", 524288),
        "max_items_per_upsert": ("5000", 5000),
        "max_pairs_per_push": ("1000", 1000),
        "max_similar_k": ("50", 50),
        "max_call_bytes": ("1048576", 1048576),
        "max_inflight_bytes": ("4194304", 4194304),
        "max_call_seconds": ("120", 120.0),
        "idle_stream_seconds": ("2.5", 2.5),
        "max_open_pulls": ("4", 4),
        "pull_buffer_bytes": ("1048576", 1048576),
        "encoder_queue_limit": ("2", 2),
        "commit_margin_seconds": ("0.2", 0.2),
        "request_id_ttl_seconds": ("600", 600.0),
        "refit_lock_lease_seconds": ("90", 90.0),
        "version_cache_size": ("0", 0),
        "row_cache_items": ("5000", 5000),
        "fit_engine": ("RAY", "ray"),
        "ray_address": ("ray://ray-head:10001", "ray://ray-head:10001"),
        "shutdown_grace_seconds": ("5", 5.0),
        "metrics_port": ("9464", 9464),
        "log_level": ("DEBUG", "debug"),
        "log_format": ("json", "json"),
    }


def error_of(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(argv or [], environ or {})
    return str(raised.value)


def test_defaults_load_with_an_empty_environment() -> None:
    config = load_config([], {})
    assert config == ServerConfig()
    assert config.listen_address == "127.0.0.1:50051"
    assert "://" not in config.store_url  # the embedded local store
    assert config.encoder_backend == "sentence-transformers"
    assert not config.auth_enabled


def test_an_environment_variable_overrides_the_default() -> None:
    assert load_config([], {"TFLLMER_PORT": "6000"}).port == 6000


def test_a_flag_overrides_the_environment() -> None:
    config = load_config(["--port", "7000"], {"TFLLMER_PORT": "6000"})
    assert config.port == 7000
    assert load_config(["--port=7001"], {"TFLLMER_PORT": "6000"}).port == 7001


def test_a_flag_turns_off_a_boolean_the_environment_turned_on() -> None:
    environ = {"TFLLMER_ALLOW_UNAUTHENTICATED": "yes"}
    assert load_config([], environ).allow_unauthenticated
    assert not load_config(["--no-allow-unauthenticated"], environ).allow_unauthenticated


def test_every_setting_round_trips_through_its_environment_variable_and_its_flag(
    non_defaults: dict[str, tuple[str, object]],
) -> None:
    assert sorted(non_defaults) == sorted(FIELD_NAMES)
    expected = {name: value for name, (_, value) in non_defaults.items()}
    # allow_unauthenticated keeps its default: it contradicts tokens (tested on its own below).
    changed = set(FIELD_NAMES) - {"allow_unauthenticated"}
    assert all(expected[name] != getattr(ServerConfig(), name) for name in changed)

    from_env = load_config([], {env_name(name): text for name, (text, _) in non_defaults.items()})
    from_flags = load_config(
        [f"{flag_name(name)}={non_defaults[name][0]}" for name in sorted(changed)], {}
    )

    assert dataclasses.asdict(from_env) == expected
    assert dataclasses.asdict(from_flags) == expected


def test_every_setting_has_help_and_help_documents_its_flag_and_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_config(["--help"], {})
    assert exited.value.code == 0
    # argparse wraps long lines; compare without the wrapping.
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(ServerConfig):
        assert f.metadata["help"].strip()
        assert flag_name(f.name) in help_text
        assert f"env {env_name(f.name)};" in help_text
    assert "default: 50051" in help_text
    assert "--no-allow-unauthenticated" in help_text


def test_an_unknown_environment_variable_is_rejected_with_a_suggestion() -> None:
    message = error_of(environ={"TFLLMER_PROT": "6000"})
    assert message == "unknown setting TFLLMER_PROT; did you mean TFLLMER_PORT?"


def test_an_unknown_environment_variable_without_a_close_match_points_to_help() -> None:
    assert "python -m server --help" in error_of(environ={"TFLLMER_ZZZ": "1"})


def test_variables_of_other_tools_and_other_prefixes_are_not_settings() -> None:
    environ = {
        DATA_DIR_ENV: "/data",
        SERVER_ENV: "127.0.0.1:50051",
        TOKEN_ENV: "a-client-token-of-some-length",
        "PATH": "/bin",
        "tfllmer_port": "1",
    }
    assert load_config([], environ) == ServerConfig()


def test_an_unknown_flag_is_rejected_with_a_suggestion() -> None:
    assert "unknown flag --prot; did you mean --port?" in error_of(["--prot", "6000"])
    assert "unknown flag --prot; did you mean --port?" in error_of(["--prot=6000"])


def test_abbreviated_flags_are_not_accepted() -> None:
    assert "unknown flag --max-text;" in error_of(["--max-text", "10"])


def test_stray_arguments_are_rejected() -> None:
    assert "unexpected argument 'serve'" in error_of(["serve"])


def test_a_flag_without_its_value_is_rejected() -> None:
    assert "--port" in error_of(["--port"])


def test_an_unknown_dict_key_is_rejected_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="unknown setting prot; did you mean port"):
        config_from_dict({"prot": 6000})


def test_a_dict_takes_native_values_and_text() -> None:
    config = config_from_dict(
        {
            "port": 6000,
            "shutdown_grace_seconds": 5,
            "admin_tokens": [ADMIN_TOKEN],
            "log_level": "warning",
        }
    )
    assert (config.port, config.shutdown_grace_seconds) == (6000, 5.0)
    assert config.admin_tokens == (ADMIN_TOKEN,)
    assert config_from_dict({"port": "6000"}).port == 6000


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TFLLMER_PORT": "70000"}, "--port / TFLLMER_PORT must be between 0 and 65535, got 70000"),
        ({"TFLLMER_PORT": "http"}, "--port / TFLLMER_PORT must be an integer, got 'http'"),
        (
            {"TFLLMER_DEFAULT_CHUNK_BYTES": "-1"},
            "--default-chunk-bytes / TFLLMER_DEFAULT_CHUNK_BYTES must be at least 1024, got -1",
        ),
        (
            {"TFLLMER_MAX_ITEMS_PER_UPSERT": "0"},
            "--max-items-per-upsert / TFLLMER_MAX_ITEMS_PER_UPSERT must be at least 1, got 0",
        ),
        (
            {"TFLLMER_VERSION_CACHE_SIZE": "-3"},
            "--version-cache-size / TFLLMER_VERSION_CACHE_SIZE must be at least 0, got -3",
        ),
        (
            {"TFLLMER_SHUTDOWN_GRACE_SECONDS": "nan"},
            "--shutdown-grace-seconds / TFLLMER_SHUTDOWN_GRACE_SECONDS must be a finite number",
        ),
        (
            {"TFLLMER_ENCODER_BACKEND": "tei"},
            "--encoder-backend / TFLLMER_ENCODER_BACKEND must be one of sentence-transformers, "
            "vllm, openai, got 'tei'",
        ),
        (
            {"TFLLMER_ALLOW_UNAUTHENTICATED": "maybe"},
            "--allow-unauthenticated / TFLLMER_ALLOW_UNAUTHENTICATED must be a boolean",
        ),
        (
            {"TFLLMER_STORE_URL": "postgres://db/tfllmer"},
            "--store-url / TFLLMER_STORE_URL has the unsupported scheme 'postgres'",
        ),
        ({"TFLLMER_STORE_URL": "redis://:6379"}, "--store-url / TFLLMER_STORE_URL needs a host"),
        (
            {"TFLLMER_STORE_URL": "redis://h:port"},
            "--store-url / TFLLMER_STORE_URL has an invalid port",
        ),
        (
            {"TFLLMER_HOST": "not a host"},
            "--host / TFLLMER_HOST must be an IP address or a host name",
        ),
        (
            {"TFLLMER_OPENAI_BASE_URL": "localhost:8000"},
            "--openai-base-url / TFLLMER_OPENAI_BASE_URL must be an http:// or https:// URL",
        ),
        (
            {"TFLLMER_ENCODER_BACKEND": "openai"},
            "--openai-base-url / TFLLMER_OPENAI_BASE_URL is required by "
            "--encoder-backend / TFLLMER_ENCODER_BACKEND openai",
        ),
        (
            {"TFLLMER_DEFAULT_CHUNK_BYTES": str(8 * 1024 * 1024)},
            "--default-chunk-bytes / TFLLMER_DEFAULT_CHUNK_BYTES must be at most "
            "--max-send-message-bytes / TFLLMER_MAX_SEND_MESSAGE_BYTES (4194304), got 8388608",
        ),
        (
            {"TFLLMER_MAX_SEND_MESSAGE_BYTES": "1024"},
            "--max-send-message-bytes / TFLLMER_MAX_SEND_MESSAGE_BYTES must be between 65536",
        ),
        (
            {"TFLLMER_METRICS_PORT": "50051"},
            "--metrics-port / TFLLMER_METRICS_PORT must differ from --port / TFLLMER_PORT",
        ),
        (
            {"TFLLMER_ADMIN_TOKENS": "short"},
            "--admin-tokens / TFLLMER_ADMIN_TOKENS token 1 has 5 characters, fewer than 16",
        ),
        (
            {"TFLLMER_ADMIN_TOKENS": f"{ADMIN_TOKEN},bad token with spaces!"},
            "--admin-tokens / TFLLMER_ADMIN_TOKENS token 2 has characters a bearer token "
            "cannot carry",
        ),
        (
            {"TFLLMER_ADMIN_TOKENS": ADMIN_TOKEN, "TFLLMER_TRAINER_TOKENS": ADMIN_TOKEN},
            "a token is in both --trainer-tokens / TFLLMER_TRAINER_TOKENS and "
            "--admin-tokens / TFLLMER_ADMIN_TOKENS",
        ),
        (
            {"TFLLMER_ADMIN_TOKENS": ADMIN_TOKEN, "TFLLMER_ALLOW_UNAUTHENTICATED": "true"},
            "--allow-unauthenticated / TFLLMER_ALLOW_UNAUTHENTICATED contradicts the tokens",
        ),
        (
            {"TFLLMER_HOST": "0.0.0.0"},
            "--host / TFLLMER_HOST 0.0.0.0 is not loopback and no tokens are set",
        ),
    ],
)
def test_invalid_values_are_rejected_naming_the_flag_and_the_variable(
    environ: dict[str, str], expected: str
) -> None:
    assert expected in error_of(environ=environ)


def test_invalid_flag_values_get_the_same_messages() -> None:
    assert "--port / TFLLMER_PORT must be between 0 and 65535, got -1" in error_of(["--port", "-1"])


def test_every_problem_is_reported_at_once() -> None:
    error = pytest.raises(
        ConfigError, load_config, [], {"TFLLMER_PORT": "x", "TFLLMER_MAX_SIMILAR_K": "k"}
    ).value
    assert len(error.errors) == 2
    assert {line.split()[0] for line in error.errors} == {"--port", "--max-similar-k"}


def test_direct_construction_and_replace_are_validated() -> None:
    with pytest.raises(ConfigError, match="--port / TFLLMER_PORT must be between"):
        ServerConfig(port=-1)
    with pytest.raises(ConfigError, match="must be an integer, got str"):
        ServerConfig(port="6000")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not loopback"):
        dataclasses.replace(ServerConfig(), host="0.0.0.0")


def test_serving_beyond_loopback_needs_tokens_or_an_explicit_opt_out() -> None:
    assert load_config(["--host", "0.0.0.0", "--allow-unauthenticated"], {}).host == "0.0.0.0"
    with_tokens = load_config(["--host", "0.0.0.0", "--admin-tokens", ADMIN_TOKEN], {})
    assert with_tokens.auth_enabled
    for loopback in ("localhost", "::1", "127.0.0.2"):
        assert load_config(["--host", loopback], {}).host == loopback


def test_tls_key_without_cert_is_rejected(pem_files: dict[str, str]) -> None:
    message = error_of(["--tls-key", pem_files["tls_key"]])
    assert "--tls-key / TFLLMER_TLS_KEY is set without --tls-cert / TFLLMER_TLS_CERT" in message


def test_tls_cert_without_key_is_rejected(pem_files: dict[str, str]) -> None:
    message = error_of(["--tls-cert", pem_files["tls_cert"]])
    assert "--tls-cert / TFLLMER_TLS_CERT is set without --tls-key / TFLLMER_TLS_KEY" in message


def test_mutual_tls_needs_server_tls(pem_files: dict[str, str]) -> None:
    message = error_of(["--tls-client-ca", pem_files["tls_client_ca"]])
    assert "--tls-client-ca / TFLLMER_TLS_CLIENT_CA (mutual TLS) needs server TLS" in message


def test_tls_files_must_exist(tmp_path: Path, pem_files: dict[str, str]) -> None:
    missing = str(tmp_path / "missing.pem")
    message = error_of(["--tls-cert", missing, "--tls-key", pem_files["tls_key"]])
    assert f"--tls-cert / TFLLMER_TLS_CERT is not a readable file: {missing!r}" in message


def test_mutual_tls_loads(pem_files: dict[str, str]) -> None:
    argv = [arg for name, path in pem_files.items() for arg in (flag_name(name), path)]
    config = load_config(argv, {})
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == tuple(pem_files.values())


def test_a_directory_is_not_a_local_store(tmp_path: Path) -> None:
    message = error_of(environ={"TFLLMER_STORE_URL": str(tmp_path)})
    assert "--store-url / TFLLMER_STORE_URL is a directory" in message


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://user:pw@cache.internal:6380", "unix:///run/r.sock"],
)
def test_redis_urls_are_accepted(url: str) -> None:
    assert load_config([], {"TFLLMER_STORE_URL": url}).store_url == url


def test_secrets_never_appear_in_repr_or_redacted_output(
    non_defaults: dict[str, tuple[str, object]],
) -> None:
    config = load_config([], {env_name(name): text for name, (text, _) in non_defaults.items()})
    secrets = [ADMIN_TOKEN, OTHER_ADMIN_TOKEN, TRAINER_TOKEN, "sk-secret-openai-key", "hunter2"]
    shown = [repr(config), str(config), f"{config}", json.dumps(config.redacted())]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    redacted = config.redacted()
    assert redacted["admin_tokens"] == ["***", "***"]
    assert redacted["openai_api_key"] == "***"
    assert redacted["store_url"] == "redis://:***@redis:6379/0"
    assert redacted["raw_store_url"] == "s3://key:***@bucket/raw"
    assert redacted["host"] == "0.0.0.0"
    assert redacted["openai_base_url"] == "http://tei:8080/v1"


@pytest.mark.parametrize(("url", "complaint"), [
    ("ftp://user:hunter2@host/raw", "unsupported scheme 'ftp'"),
    ("__FILE__", "is a file"),
])
def test_a_raw_store_url_that_can_not_hold_block_files_is_refused(
        url: str, complaint: str, tmp_path: Path) -> None:
    if url == "__FILE__":
        url = str(tmp_path / "a-file")
        Path(url).write_text("")
    with pytest.raises(ConfigError) as refused:
        load_config([], {"TFLLMER_RAW_STORE_URL": url})
    assert complaint in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_unset_secrets_show_as_empty() -> None:
    redacted = ServerConfig().redacted()
    assert redacted["openai_api_key"] == ""
    assert redacted["admin_tokens"] == []


def test_a_redis_username_stays_readable_when_its_password_is_masked() -> None:
    config = load_config([], {"TFLLMER_STORE_URL": "rediss://svc:p4ss@cache:6380/1"})
    assert config.redacted()["store_url"] == "rediss://svc:***@cache:6380/1"


def test_error_messages_never_quote_secrets() -> None:
    leaked_url = "redis://:hunter2@host:notaport"
    assert "hunter2" not in error_of(environ={"TFLLMER_STORE_URL": leaked_url})
    bad_token = "bad token but secret"
    assert bad_token not in error_of(environ={"TFLLMER_ADMIN_TOKENS": bad_token})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("yes", True), ("TRUE", True), (" Yes ", True)]
    + [("false", False), ("0", False), ("no", False), ("No", False)],
)
def test_booleans_from_the_environment(text: str, expected: bool) -> None:
    config = load_config([], {"TFLLMER_ALLOW_UNAUTHENTICATED": text})
    assert config.allow_unauthenticated is expected


def test_lists_from_the_environment_are_comma_separated() -> None:
    environ = {"TFLLMER_ADMIN_TOKENS": f" {ADMIN_TOKEN} , {OTHER_ADMIN_TOKEN} "}
    assert load_config([], environ).admin_tokens == (ADMIN_TOKEN, OTHER_ADMIN_TOKEN)


@pytest.mark.parametrize("tokens", [",", " , ", f"{ADMIN_TOKEN},", f",{ADMIN_TOKEN}",
                                    f"{ADMIN_TOKEN},,{OTHER_ADMIN_TOKEN}"])
def test_a_token_list_with_an_empty_item_is_refused_not_read_as_no_tokens(tokens: str) -> None:
    """``TFLLMER_ADMIN_TOKENS=","`` used to parse as no tokens: authentication silently off."""
    for variable in ("TFLLMER_ADMIN_TOKENS", "TFLLMER_TRAINER_TOKENS"):
        message = error_of(environ={variable: tokens})
        assert "has an empty item" in message
        assert ADMIN_TOKEN not in message
    assert "has an empty item" in error_of(["--admin-tokens", tokens])


def test_an_empty_environment_variable_counts_as_unset() -> None:
    environ = {"TFLLMER_PORT": "", "TFLLMER_ADMIN_TOKENS": "", "TFLLMER_MODEL": "  "}
    assert load_config([], environ) == ServerConfig()


def test_ipv6_listen_address_is_bracketed() -> None:
    assert load_config(["--host", "::1", "--port", "0"], {}).listen_address == "[::1]:0"


def test_the_markdown_table_lists_every_setting() -> None:
    lines = markdown_table().splitlines()
    assert lines[0] == "| Flag | Environment variable | Default | Description |"
    rows = lines[2:]
    assert len(rows) == len(FIELD_NAMES)
    for name, row in zip(FIELD_NAMES, rows, strict=True):
        assert row.startswith(f"| `{flag_name(name)}`")
        assert f"| `{env_name(name)}` |" in row
    assert "| `50051` |" in rows[FIELD_NAMES.index("port")]


def test_the_module_prints_the_table_and_checks_a_configuration(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config_module.main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()

    monkeypatch.setenv("TFLLMER_ADMIN_TOKENS", ADMIN_TOKEN)
    assert config_module.main(["--port", "6000"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["port"], printed["admin_tokens"]) == (6000, ["***"])

    assert config_module.main(["--port", "70000"]) == 2
    assert "--port / TFLLMER_PORT must be between" in capsys.readouterr().err


def test_the_ray_fit_engine_without_ray_installed_is_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_find_spec = config_module.importlib.util.find_spec
    monkeypatch.setattr(config_module.importlib.util, "find_spec",
                        lambda name, *rest: None if name == "ray" else real_find_spec(name))
    assert "Ray is not installed: pip install 'tfllmer-service[ray]'" in error_of(
        ["--fit-engine", "ray"])
    assert load_config([], {}).fit_engine == "local"  # the default needs nothing


def test_an_unknown_fit_engine_is_refused_with_the_choices() -> None:
    assert "must be one of local, ray, got 'dask'" in error_of([], {env_name("fit_engine"): "dask"})
