# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Both create or refresh the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test data lint clean-venv test-reliability reliability test-compose

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, so nothing later pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# Both sides and the tools: the wheel's extras are `server` and `trainer`.
	$(PY) -m pip install --quiet -e '.[server,trainer,dev]'
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m trainer_client.datasets fetch

demo: data
	$(PY) -m bench.demo

test: data
	$(PY) -m pytest

# Real processes killed and restarted, replicas, a Redis Cluster, the full fuzz and the
# 60 s load (minutes; excluded from `make test`).
test-reliability: data
	$(PY) -m pytest -m reliability

# docker-compose.yml built and run in containers (podman + docker-compose; minutes, image
# builds included; excluded from `make test`, skipped where podman is not installed).
test-compose: data
	$(PY) -m pytest -m compose tests/test_compose_stack.py

# The same scenarios plus the 2,000-case fuzz and the 32-client load, recorded in
# bench/results/reliability.{json,md}.
reliability: data
	$(PY) -m bench.reliability

# The gates CI runs before the tests: style, types, layering (ARCHITECTURE §11) and the
# wire contract (buf lint, and buf breaking against main; see .ci/contract).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	.ci/contract

clean-venv:
	rm -rf $(VENV)
