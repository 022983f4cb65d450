"""deploy/monitoring: the Prometheus scrape config and the provisioned Grafana dashboard of the
compose profile `monitoring`. Every metric a dashboard query names must be one the server
exports (a renamed metric would leave a panel silently empty), and compose must accept the
profile as Debian's docker-compose reads it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tfllmer.json"
METRIC_NAME = re.compile(r"\b((?:grpc|tfllmer)_[a-z0-9_]+)\b")
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")
LABELS = {"grpc_service", "grpc_method", "grpc_type", "grpc_code"}


def exported_names() -> set[str]:
    """Every sample name the server's registry can export."""
    families = ServiceMetrics().registry.collect()
    return {family.name + suffix for family in families for suffix in SUFFIXES}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_queries_name_only_exported_metrics() -> None:
    names = exported_names()
    queried = {name for panel in dashboard()["panels"] for target in panel["targets"]
               for name in METRIC_NAME.findall(target["expr"])} - LABELS
    assert {"grpc_server_started_total", "grpc_server_handled_total",
            "grpc_server_handling_seconds_bucket"} <= queried
    assert queried - names == set()


def test_dashboard_shows_the_domain_metrics_the_issue_lists() -> None:
    queried = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for metric in ("tfllmer_refit_duration_seconds", "tfllmer_refit_phase",
                   "tfllmer_refit_fraction_done", "tfllmer_encode_items_per_second",
                   "tfllmer_catalog_items", "tfllmer_catalog_active_version",
                   "tfllmer_catalog_active_version_activated_seconds",
                   "tfllmer_stream_inflight_bytes"):
        assert metric in queried, metric


def test_dashboard_panels_use_the_provisioned_data_source() -> None:
    datasources = yaml.safe_load(
        (MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    board = dashboard()
    assert board["uid"] and len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
    provider = yaml.safe_load(
        (MONITORING / "grafana/provisioning/dashboards/tfllmer.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_prometheus_scrapes_the_servers_metrics_port() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for group in job["static_configs"]
               for t in group["targets"]]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    port = compose["x-server-env"]["TFLLMER_METRICS_PORT"]
    assert targets == [f"server:{port}", f"server-cpu:{port}"]


def test_compose_monitoring_profile_runs_prometheus_and_grafana() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./deploy/monitoring/grafana/provisioning:" in mounts
    assert "./deploy/monitoring/grafana/dashboards:" in mounts


def test_docker_compose_accepts_the_monitoring_profile() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    done = subprocess.run(
        ["docker-compose", "--env-file", ".env.example", "--profile", "monitoring", "config"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert {"prometheus", "grafana"} <= set(yaml.safe_load(done.stdout)["services"])
