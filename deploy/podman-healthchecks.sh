#!/usr/bin/env bash
# Runs the HEALTHCHECKs of a compose project's running containers every INTERVAL seconds,
# for podman hosts without systemd (CI containers, these machines). Podman schedules
# healthchecks with systemd timers; without systemd they never run, a container stays
# "starting" forever, and `depends_on: condition: service_healthy` never releases. Docker, and
# podman under systemd, need none of this.
#
#   deploy/podman-healthchecks.sh PROJECT [INTERVAL]   # until killed; INTERVAL default 5 s
#
# `podman healthcheck run` applies the container's own command, timeout, start period and
# retries, and records the result that `podman inspect` and the Docker API report.
set -uo pipefail
project=${1:?usage: $0 COMPOSE_PROJECT [INTERVAL]}
interval=${2:-5}
PODMAN=${PODMAN:-podman}
while :; do
  for id in $($PODMAN ps -q --filter "label=com.docker.compose.project=$project"); do
    # Containers without a HEALTHCHECK answer "no defined healthcheck": nothing to run.
    $PODMAN healthcheck run "$id" >/dev/null 2>&1 || true
  done
  sleep "$interval"
done
