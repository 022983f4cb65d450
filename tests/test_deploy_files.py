"""The deployment files, checked without Docker: Dockerfiles, docker-compose.yml, .env.example
and deploy/redis.conf. (`.ci/run` also runs Debian's `docker-compose config` on them.)"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from protos.environment import CLIENT_VARIABLES
from server.config import ServerConfig, load_config
from server.settings import env_name

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILES = {
    "server-gpu": DEPLOY / "Dockerfile.server-gpu",
    "server-cpu": DEPLOY / "Dockerfile.server-cpu",
    "trainer": DEPLOY / "Dockerfile.trainer",
}
SERVER_IMAGES = ("server-gpu", "server-cpu")
SETTINGS = frozenset(env_name(f.name) for f in fields(ServerConfig))
KNOWN_TFLLMER = SETTINGS | CLIENT_VARIABLES
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY", re.IGNORECASE)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        current += " " + line.removesuffix("\\").strip() if current else line.removesuffix("\\")
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    result = []
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def env_of(path: Path) -> dict[str, str]:
    """The ENV assignments of a Dockerfile (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions(path):
        if keyword == "ENV":
            for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', arguments):
                env[key] = value.strip('"')
    return env


def dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution (what `docker-compose config` does), for one value."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = env.get(name)
        if op in (":-", ":?") and not present:
            present = None
        if present is not None:
            return present
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"docker-compose.yml: {name} is required: {arg or 'unset'}")

    return INTERPOLATION.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return dotenv(ROOT / ".env.example")


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_as_non_root(name: str) -> None:
    users = [args for keyword, args in instructions(DOCKERFILES[name]) if keyword == "USER"]
    assert users, f"{name}: no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as root"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_bases_are_pinned(name: str) -> None:
    path = DOCKERFILES[name]
    args = dict(
        arguments.split("=", 1)
        for keyword, arguments in instructions(path)
        if keyword == "ARG" and "=" in arguments
    )
    stages = set()
    for keyword, arguments in instructions(path):
        if keyword != "FROM":
            continue
        image, *rest = arguments.split()
        if rest and rest[0].upper() == "AS":
            stages.add(rest[1])
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), image)
        if image in stages:
            continue
        tag = image.rpartition(":")[2] if ":" in image else ""
        assert "@sha256:" in image or re.search(r"\d+\.\d+", tag), (
            f"{name}: base image {image} is not pinned to a version"
        )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_bakes_in_no_secret(name: str) -> None:
    for keyword, arguments in instructions(DOCKERFILES[name]):
        if keyword in ("ENV", "ARG", "LABEL"):
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", arguments):
                assert not (SECRET_NAME.search(key) and value), f"{name}: {keyword} {key}=…"
        if keyword in ("COPY", "ADD"):
            assert ".env" not in arguments.split(), f"{name}: copies .env"
    text = DOCKERFILES[name].read_text()
    assert not re.search(r"(TOKENS?|PASSWORD)=\S", text), f"{name}: a token or password value"


@pytest.mark.parametrize("name", SERVER_IMAGES)
def test_server_images_have_the_grpc_healthcheck(name: str) -> None:
    steps = dict(instructions(DOCKERFILES[name]))
    assert "server.healthcheck" in steps.get("HEALTHCHECK", ""), f"{name}: no HEALTHCHECK probe"
    assert steps.get("ENTRYPOINT") == '["python", "-m", "server"]'


def test_trainer_image_runs_the_worker() -> None:
    steps = dict(instructions(DOCKERFILES["trainer"]))
    assert steps.get("ENTRYPOINT") == '["python", "-m", "trainer_client.worker"]'


def test_images_install_what_they_promise() -> None:
    gpu = DOCKERFILES["server-gpu"].read_text()
    assert '".[server,gpu]"' in gpu and "vllm==" in gpu
    for name, extra in (("server-cpu", "server"), ("trainer", "trainer")):
        text = DOCKERFILES[name].read_text()
        assert "download.pytorch.org/whl/cpu" in text and "TORCH_VERSION=2.13.0" in text, name
        assert f'pip install ".[{extra}]"' in text, name  # the trainer has no server deps


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_environment_is_a_valid_server_config(name: str) -> None:
    env = env_of(DOCKERFILES[name])
    unknown = sorted(k for k in env if k.startswith("TFLLMER_") and k not in KNOWN_TFLLMER)
    assert not unknown, f"{name}: unknown TFLLMER_ variables {unknown}"
    if name in SERVER_IMAGES:
        # The image alone (tokens added as compose adds them) must be a configuration that
        # the server accepts: 0.0.0.0 needs tokens.
        tokens = {"TFLLMER_ADMIN_TOKENS": "a" * 32, "TFLLMER_TRAINER_TOKENS": "t" * 32}
        load_config([], {**env, **tokens})


def test_build_context_leaves_out_secrets_and_the_venv() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", ".dockerignore should start by excluding everything"
    assert not any(p.lstrip("!").startswith((".env", ".venv", ".cache")) for p in patterns)


# ---------------------------------------------------------------- docker-compose.yml


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "server", "server-cpu", "trainer", "refit"} <= set(services)
    assert services["server-cpu"]["profiles"] == ["cpu"]
    assert services["refit"]["profiles"] == ["ops"]
    assert "profiles" not in services["server"] and "profiles" not in services["trainer"]
    assert {"redis-data", "models", "data", "runs"} <= set(compose["volumes"])


def test_compose_builds_existing_dockerfiles(compose: dict[str, Any]) -> None:
    built = set()
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            assert re.search(r":v?\d+\.\d+", service["image"]), f"{name}: image not pinned"
            continue
        dockerfile = (ROOT / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        built.add(dockerfile)
    assert built == {path.resolve() for path in DOCKERFILES.values()}


def test_compose_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
            else:
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_compose_server_settings(compose: dict[str, Any]) -> None:
    services = compose["services"]
    server = services["server"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = service_env(server)
    assert env["TFLLMER_ENCODER_BACKEND"] == "vllm"
    assert env["TFLLMER_STORE_URL"].startswith("redis://:${REDIS_PASSWORD}@redis:6379/")
    assert env["TFLLMER_HOST"] == "0.0.0.0"
    assert service_env(services["server-cpu"])["TFLLMER_ENCODER_BACKEND"] == (
        "sentence-transformers")
    for name in ("server", "server-cpu"):
        assert "server.healthcheck" in " ".join(services[name]["healthcheck"]["test"])
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ping" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in ("trainer", "refit"):
        assert services[name]["depends_on"]["server"]["condition"] == "service_healthy"


def test_compose_trainer_is_scalable(compose: dict[str, Any]) -> None:
    trainer = compose["services"]["trainer"]
    assert "container_name" not in trainer and "ports" not in trainer
    env = service_env(trainer)
    assert env["TFLLMER_SERVER"] == "${SERVER_ADDRESS:-server:50051}"
    assert env["TFLLMER_TOKEN"].startswith("${TRAINER_TOKEN")
    assert "trainer_client.worker" in " ".join(trainer["entrypoint"])


def test_compose_refit_job(compose: dict[str, Any]) -> None:
    refit = compose["services"]["refit"]
    command = " ".join(refit["entrypoint"] + refit["command"])
    assert command.startswith("python -m trainer_client.admin refit --catalog ${CATALOG")
    assert "--retention 0.8 --activate" in command
    assert service_env(refit)["TFLLMER_TOKEN"].startswith("${ADMIN_TOKEN")


def test_compose_tfllmer_variables_are_real(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\bTFLLMER_[A-Z0-9_]+", text))
    assert used, "no TFLLMER_ variable found"
    assert not used - KNOWN_TFLLMER, f"not server settings: {sorted(used - KNOWN_TFLLMER)}"
    for name, service in compose["services"].items():
        for key in service_env(service):
            assert not key.startswith("TFLLMER_") or key in KNOWN_TFLLMER, f"{name}: {key}"


def test_compose_holds_no_secret_values(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if SECRET_NAME.search(key) or "STORE_URL" in key:
                assert "${" in value or not re.search(r":[^@/]+@", value), f"{name}: {key}"
                if SECRET_NAME.search(key):
                    assert value.startswith("${"), f"{name}: {key} has a literal value"


def test_compose_servers_accept_their_configuration(
    compose: dict[str, Any], example_env: dict[str, str]
) -> None:
    """The servers' environment, interpolated from .env.example over the image's ENV, is a
    configuration `python -m server` starts with (tokens long enough, URL valid, ...)."""
    for name, image in (("server", "server-gpu"), ("server-cpu", "server-cpu")):
        env = env_of(DOCKERFILES[image])
        env.update({k: interpolate(v, example_env) for k, v in
                    service_env(compose["services"][name]).items()})
        config = load_config([], env)
        assert config.store_url.startswith("redis") and config.auth_enabled, name
        assert config.metrics_port and config.host == "0.0.0.0", name


def test_env_example_covers_every_required_variable(example_env: dict[str, str]) -> None:
    text = (ROOT / "docker-compose.yml").read_text().replace("$$", "")
    for match in INTERPOLATION.finditer(text):
        if match["op"] not in (":-", "-"):
            assert match["name"] in example_env, f".env.example lacks {match['name']}"
    for key in ("REDIS_PASSWORD", "ADMIN_TOKEN", "TRAINER_TOKEN", "CATALOG", "MODEL"):
        assert example_env.get(key), f".env.example: {key} is empty"
    for key in ("ADMIN_TOKEN", "TRAINER_TOKEN"):
        assert len(example_env[key]) >= 16


def test_env_file_is_git_ignored() -> None:
    lines = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert ".env" in lines
    if not (ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT).returncode == 1


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    env = {k: v for k, v in os.environ.items() if k not in dotenv(ROOT / ".env.example")}
    done = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "config", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- redis.conf


def test_redis_conf_persists_with_aof() -> None:
    directives = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            directives[key.lower()] = value.strip()
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "everysec"
    assert directives["dir"] == "/data"
    assert directives["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in directives, "the password comes from the compose command"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_redis_server_starts_with_the_conf(tmp_path: Path) -> None:
    """The conf as Redis reads it, the password passed as in docker-compose.yml."""
    import redis

    conf = (DEPLOY / "redis.conf").read_text().replace("\ndir /data\n", f"\ndir {tmp_path}\n")
    (tmp_path / "redis.conf").write_text(conf)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    password = "deploy-test-password-0123456789"
    process = subprocess.Popen(
        ["redis-server", str(tmp_path / "redis.conf"), "--requirepass", password,
         "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis(port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        client.set("k", "v")
        client.shutdown()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
    assert (tmp_path / "appendonlydir").is_dir()


# ---------------------------------------------------------------- local builds (podman)


def test_redis_runs_as_its_own_user(compose: dict[str, Any]) -> None:
    """The command is `sh -c …`, so the image's entrypoint would not drop root itself."""
    redis = compose["services"]["redis"]
    assert redis["command"][0] == "sh" and redis.get("user") == "redis"


def test_local_base_images_use_the_names_the_files_use(compose: dict[str, Any]) -> None:
    """deploy/local-images.sh reads the Python image from Dockerfile.server-cpu and the Redis
    image from docker-compose.yml: every Python Dockerfile must name the same image."""
    pythons = {
        name: dict(a.split("=", 1) for k, a in instructions(path) if k == "ARG" and "=" in a)
        .get("PYTHON_IMAGE")
        for name, path in DOCKERFILES.items() if name != "server-gpu"
    }
    assert len(set(pythons.values())) == 1 and None not in pythons.values(), pythons
    script = DEPLOY / "local-images.sh"
    assert os.access(script, os.X_OK) and os.access(DEPLOY / "podman-healthchecks.sh", os.X_OK)
    done = subprocess.run(["bash", "-c", f"source <(sed -n '/^python_image()/,/^}}/p;"
                           f"/^redis_image()/,/^}}/p' {script}); python_image; redis_image"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == [next(iter(pythons.values())), compose["services"]["redis"]
                                   ["image"]], done.stderr


def test_offline_override_only_changes_fetch_data() -> None:
    override = yaml.safe_load((DEPLOY / "compose.offline.yml").read_text())
    assert set(override) == {"services"} and set(override["services"]) == {"fetch-data"}
    fetch = override["services"]["fetch-data"]
    assert fetch["environment"] == {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_offline_override(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in dotenv(ROOT / ".env.example")}
    done = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "-f", "docker-compose.yml", "-f",
         "deploy/compose.offline.yml", "--profile", "ops", "config"],
        cwd=ROOT, env={**env, "OFFLINE_WHEELS": str(tmp_path)}, capture_output=True,
        text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    fetch = yaml.safe_load(done.stdout)["services"]["fetch-data"]
    assert {"data:/data:rw", f"{tmp_path}:/wheels:ro"} <= set(fetch["volumes"])
