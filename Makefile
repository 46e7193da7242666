# Agent runtime: `make run` starts the whole stack, `make test` runs every test against the real services.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export FLASK_APP := wsgi

.PHONY: help install services browser migrate run test test-fast lint bench chaos demo clean bench-messaging bench-execute bench-sse bench-summary bench-fairness bench-tracing bench-agents bench-inflight bench-tools

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed  ## Create the virtualenv from requirements.txt

services:  ## Check PostgreSQL, Redis, RabbitMQ (+ management); start what is down
	bash scripts/ensure_services.sh

migrate: install  ## Bring the database schema up to date
	$(VENV)/bin/flask db upgrade

run: install services migrate  ## Install, migrate, and start web, worker, worker-llm, mailbox and flower (honcho)
	@echo ""
	@echo "  API         http://127.0.0.1:$(PORT)         (GET /healthz, /readyz, /openapi.json)"
	@echo "  Status page http://127.0.0.1:$(PORT)/"
	@echo "  Flower      http://127.0.0.1:$$(($(PORT)+300))"
	@echo "  RabbitMQ    http://127.0.0.1:15672           (guest/guest)"
	@echo "  API key:    $(VENV)/bin/flask --app wsgi keys create --workspace demo"
	@echo ""
	rm -rf instance/prometheus && mkdir -p instance/prometheus
	ulimit -n $$(ulimit -Hn) 2>/dev/null; \
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/instance/prometheus \
		$(VENV)/bin/honcho start -p $(PORT)

browser:  ## Install Debian's chromium for the status-page test, if missing
	bash scripts/ensure_browser.sh

test: install services browser  ## Unit, integration (real PostgreSQL, RabbitMQ, Redis, SQLite) and property tests
	$(VENV)/bin/pytest -m "not slow"

chaos: install services  ## Fault injection, quick and long runs (worker/mailbox kills, broker/Redis restarts, DB cut, poison, broker alarms, 3-node cluster node loss, a worker host cut off)
	$(VENV)/bin/pytest tests/chaos tests/property_tests/tools/test_tool_loop_kills.py -s -m "slow or not slow"

lint: install  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app tasks coordination bench celeryconfig.py wsgi.py

clean:  ## Remove the virtualenv and local SQLite data
	rm -rf $(VENV) instance

demo: install  ## Against the running stack (make run): stream an execution live, message, audit trail
	$(PY) scripts/demo.py

bench: install services  ## Every benchmark (execute, messaging, sse_streams, agents_scale, fairness, inflight, tool_loop), then one summary table
	$(PY) -m bench.execute
	$(PY) -m bench.messaging
	$(PY) -m bench.sse_streams
	$(PY) -m bench.agents_scale --sizes 1000,10000
	$(PY) -m bench.fairness
	$(PY) -m bench.tracing
	$(PY) -m bench.inflight --sizes 100,1000
	$(PY) -m bench.tool_loop
	$(PY) -m bench.summary

bench-agents: install services  ## Mailbox and creation cost at 1,000 / 10,000 / 100,000 agents, notified vs polling (~30 min)
	$(PY) -m bench.agents_scale --sizes 1000,10000,100000

bench-inflight: install services  ## LLM streams in flight on one host: 100 and 1,000 executions streaming ~10 s over HTTP
	$(PY) -m bench.inflight --sizes 100,1000

bench-summary:  ## The summary table of the last results under bench/results/
	$(PY) -m bench.summary

bench-sse: install services  ## Live SSE streams held by one gunicorn gevent process: 100, 500, 1,000; p99 delivery lag
	$(PY) -m bench.sse_streams

bench-execute: install services  ## Executions/s through the API vs a bare Celery chain, first-delta latency
	$(PY) -m bench.execute

bench-fairness: install services  ## Workspace B's queue wait behind A's 5,000-execution backlog vs idle; tokens/min and concurrency a limited credential sends
	$(PY) -m bench.fairness

bench-tracing: install services  ## CPU per execution and exec/s, tracing on (OTLP to a receiver) vs off vs off again, side by side (~5 min)
	$(PY) -m bench.tracing

bench-tools: install services  ## A 3-turn webhook tool loop vs a single-turn execution: executions/s, ms added per turn
	$(PY) -m bench.tool_loop

bench-messaging: install services  ## Confirmed sends/s (single, batch) vs raw pika / aio-pika, send -> readable p50/p99
	$(PY) -m bench.messaging
