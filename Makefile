# Two commands for a fresh machine: `make run` (set up + weekly refresh) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DAGSTER_HOME := $(abspath .dagster_home)
# dbt re-parses the whole project when an env var its profile reads changes between the
# manifest build and a run: build the manifest with the lake the run will use.
export ENGAGEMENT_LAKE_DIR ?= $(abspath .lake)
STAMP := $(VENV)/.installed
MANIFEST := dbt_project/target/manifest.json
CUSTOMERS ?= 100000
# `make run`: WEEKS weeks of history ending at WEEK (default: the last closed week), run oldest first
# as one backfill of the weekly_refresh job; the partitions start at ENGAGEMENT_FIRST_WEEK.
WEEK ?=
WEEKS ?= 4

.PHONY: setup run test browser postgres ui bench eval-kb manifest clean serve bench-api

setup: $(STAMP) $(MANIFEST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,kb,api]'
	touch $@

# dagster-dbt reads dbt's manifest at import time: build it before anything loads the definitions.
$(MANIFEST): $(STAMP) $(shell find dbt_project -name '*.sql' -o -name '*.yml' | grep -v target/)
	$(BIN)/dagster-dbt project prepare-and-package --file engagement_dagster/defs/dbt/project.py
	touch $@

manifest: $(STAMP)
	$(BIN)/dagster-dbt project prepare-and-package --file engagement_dagster/defs/dbt/project.py

run: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m engagement_dagster.cli run --customers $(CUSTOMERS) --weeks $(WEEKS) $(if $(WEEK),--week $(WEEK))

test: setup browser postgres
	$(BIN)/ruff check engagement_dagster tests
	$(BIN)/python -m pytest

# The UI test drives a real Chromium. Installed from Debian when missing and apt is at hand;
# elsewhere install Chromium yourself (or set ENGAGEMENT_CHROMIUM to its path).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [ -n "$$ENGAGEMENT_CHROMIUM" ] \
	  || ! command -v apt-get >/dev/null \
	  || { $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq \
	       && $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; }

# The ECS launch test runs against a real PostgreSQL (Debian's package; the test starts its own
# server in a temporary directory). Installed when missing and apt is at hand.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v apt-get >/dev/null \
	  || { $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq \
	       && $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }

# Full weekly refresh, timed per stage; BENCH_CUSTOMERS="100000 1000000" for the larger size.
# Then ingest alone on a 10M-row CSV (about 3 GB, written once into .bench-data/); BENCH_INGEST_ROWS=0 skips it.
BENCH_CUSTOMERS ?= 100000
BENCH_REPEAT ?= 3
BENCH_INGEST_ROWS ?= 10000000
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m engagement_dagster.bench --customers $(BENCH_CUSTOMERS) --repeat $(BENCH_REPEAT) \
	  --ingest-rows $(BENCH_INGEST_ROWS) $(BENCH_ARGS)

# Each model's test metric against training rows, on the warehouse a bench left
# (`make bench BENCH_CUSTOMERS=10000000 BENCH_REPEAT=1 BENCH_ARGS=--keep-lake` first).
LC_WAREHOUSE ?= .lake-bench/warehouse.duckdb
LC_ROWS ?= 50000 100000 250000 500000 1000000 2000000 5000000
.PHONY: learning-curve
learning-curve: $(STAMP)
	$(BIN)/python -m engagement_dagster.bench_learning_curve --warehouse $(LC_WAREHOUSE) --rows $(LC_ROWS)

# The prediction API at http://127.0.0.1:8000 (docs at /docs), one uvicorn worker, over the models of
# the registry `make run` filled. Requests need the header x-api-key: ENGAGEMENT_API_KEYS (comma-separated)
# if set, else API_KEY below (a development key for this machine only).
API_KEY ?= local-development-key
serve: setup
	test -f $(ENGAGEMENT_LAKE_DIR)/models/churn_model/champion.json || $(MAKE) run WEEKS=1
	ENGAGEMENT_API_KEYS="$${ENGAGEMENT_API_KEYS:-$(API_KEY)}" $(BIN)/python -m engagement_dagster.cli serve

# The API's online features are generated from the dbt feature models (one definition): after editing
# them, regenerate (CI fails while engagement_dagster/api/features_generated.py is stale).
.PHONY: export-features
export-features: setup
	$(BIN)/python -m engagement_dagster.cli export-features

# Open-loop load on loopback at a fixed rate against one uvicorn worker: latency percentiles of cache
# misses and hits, errors, and a batch of 1,000 customers (docs/benchmarks.md).
bench-api: setup
	test -f $(ENGAGEMENT_LAKE_DIR)/models/churn_model/champion.json || $(MAKE) run WEEKS=1
	$(BIN)/python -m engagement_dagster.api.bench

# The knowledge base on its evaluation set (evals/kb_questions.yaml): retrieval recall@5 and MRR by
# BM25, embeddings and hybrid; figures in the offline answers; latency. Runs the week first if none is there.
eval-kb: setup
	test -f $(ENGAGEMENT_LAKE_DIR)/warehouse.duckdb || $(MAKE) run
	$(BIN)/python -m engagement_dagster.core.kb.evaluate $(if $(WEEK),--week $(WEEK))

# dbt's documentation site for the local target: every model and column described, the lineage graph,
# and the warehouse's catalog (column types, row counts) when a warehouse is there. `make docs-serve`
# serves it on 127.0.0.1:8080; static_index.html is the same site in one file.
DBT_DOCS := dbt_project/target-docs
.PHONY: docs docs-serve
docs: setup
	cd dbt_project && $(BIN)/dbt docs generate --target local --profiles-dir . --target-path target-docs --static \
	  $(if $(wildcard $(ENGAGEMENT_LAKE_DIR)/warehouse.duckdb),,--empty-catalog)
	@echo "dbt docs: $(abspath $(DBT_DOCS))/index.html (one file: $(abspath $(DBT_DOCS))/static_index.html)"

docs-serve: docs
	cd dbt_project && $(BIN)/dbt docs serve --profiles-dir . --target-path target-docs --host 127.0.0.1 --port 8080 \
	  --no-browser

ui: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/python -m engagement_dagster.ui --host 127.0.0.1 --port 3000

clean:
	rm -rf .lake .lake-bench .bench-data .dagster_home dbt_project/target dbt_project/target-bench dbt_project/target-docs dbt_project/logs
