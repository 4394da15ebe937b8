# The two commands a new user needs: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAB := PYTHONPATH=lab $(BIN)/python -m azurelab
LAB_STATE_DIR ?= $(CURDIR)/.lab
PLAYBOOK := source $(LAB_STATE_DIR)/env.sh && $(BIN)/ansible-playbook -i inventories/lab
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider
COLLECTION_LINK := $(VENV)/collections/ansible_collections/csa_inabox/managed_identity
COSMOS_BACKEND := lab/cosmos

.PHONY: demo test venv system-packages test-packages lab-up lab-down lab-reset lab-status lint changelog unit integration sanity molecule \
	bench chaos clean

## demo: set everything up, start the lab, migrate the lab fleet, print the report
demo: venv lab-up
	$(PLAYBOOK) playbooks/migrate.yml
	@echo; echo "Report: $(LAB_STATE_DIR)/reports/migration-report.{txt,json}"

## test: ansible-lint and the changelog fragments, unit tests, ansible-test sanity, lab and playbook integration
## tests (the Galaxy artifact and the execution environment's build context included), Molecule
test: lint unit sanity integration molecule

venv: $(VENV)/.installed $(COLLECTION_LINK) $(COSMOS_BACKEND)/node_modules/.installed
$(VENV)/.installed: requirements.txt requirements-lab.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-lab.txt
	touch $@
# The lab's Cosmos DB data plane runs @vercel/cosmosdb-server, pinned by lab/cosmos/package-lock.json; it needs Node.js
# >= 20. `npm ci` reinstalls node_modules whenever the lock changes (--prefer-offline: npm's cache first).
$(COSMOS_BACKEND)/node_modules/.installed: $(COSMOS_BACKEND)/package.json $(COSMOS_BACKEND)/package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null || \
	  { echo "the lab's Cosmos DB backend needs Node.js >= 20 on PATH (found: $$(node --version 2>/dev/null || echo none))" >&2; \
	    exit 1; }
	cd $(COSMOS_BACKEND) && npm ci --no-audit --no-fund --prefer-offline --loglevel=error
	touch $@
# The working tree is the collection: link it where ansible.cfg's collections_path looks.
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn $(CURDIR) $@

# From Debian: the lab's real PostgreSQL 15 server, and unixODBC for pyodbc (the Microsoft ODBC Driver 18 itself
# comes from the mssql-python-odbc wheel). Installed when missing, as root, the only user this targets.
DEBIAN_PACKAGES := postgresql-15 unixodbc
system-packages:
	@dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1 || { test "$$(id -u)" = 0 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; } || \
	  { echo "needed: apt-get install -y $(DEBIAN_PACKAGES)" >&2; exit 1; }

# Only for the tests: Debian's Chromium, in which tests/integration/test_audit_playbook.py loads the audit page.
TEST_PACKAGES := chromium
test-packages:
	@dpkg -s $(TEST_PACKAGES) >/dev/null 2>&1 || { test "$$(id -u)" = 0 && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES) >/dev/null; } || \
	  { echo "needed: apt-get install -y $(TEST_PACKAGES)" >&2; exit 1; }

lab-up: venv system-packages
	$(LAB) up
lab-down: venv
	$(LAB) down
lab-reset: venv system-packages
	$(LAB) reset
lab-status: venv
	$(LAB) status

# ansible-lint's production profile (.ansible-lint: offline, nothing installed from Galaxy) and the changelog
# fragments. Both run the venv's Ansible, hence the PATH.
lint: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint
	$(BIN)/antsibull-changelog lint
	$(BIN)/antsibull-changelog lint-changelog-yaml --strict changelogs/changelog.yaml

# Rebuild changelogs/changelog.yaml and CHANGELOG.rst for galaxy.yml's version from changelogs/fragments/ and the
# modules' version_added (tests/unit/test_changelog.py fails until this is run after such a change).
changelog: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/antsibull-changelog release --update-existing --reload-plugins

unit: venv system-packages
	$(PYTEST) -q tests/unit

sanity: venv
	tests/sanity/run.sh

# Each test module starts its own lab on its own ports and state folder, so a running `make demo` lab is untouched.
# tests/hostile is the hostile-input corpus: one module call per case on one lab, each refused and changing nothing.
integration: venv system-packages test-packages
	$(PYTEST) -q -n 2 --dist loadfile tests/integration tests/hostile

molecule: venv system-packages
	MOLECULE_LAB_PORT_BASE=$$($(BIN)/python -c 'import sys; sys.path.insert(0, "tests/integration"); \
	  from labrunner import free_base; print(free_base())') PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/molecule test -s postgres

# Fleet benchmark (benchmarks/fleet.py): migrate.yml on generated lab fleets, first run and re-run, measured, and at
# BENCH_BASELINE_SIZES the tutorial's az/psql/pyodbc script and the azure.azcollection playbook on fresh labs of the
# same fleets (each baseline installs its own venv under benchmarks/ on first use: azure-cli, the `ansible` package);
# writes benchmarks/RESULTS.md and fleet.png. BENCH_SIZES picks the fleet sizes. Needs GNU time. A bench split over
# several sittings: BENCH_FLAGS=--merge keeps the sizes of benchmarks/results.json that this sitting does not measure.
BENCH_SIZES ?= 10 50 100 500
BENCH_BASELINE_SIZES ?= 10 50
BENCH_FLAGS ?=
bench: venv system-packages
	@command -v /usr/bin/time >/dev/null || { test "$$(id -u)" = 0 && apt-get install -y -qq time >/dev/null; }
	$(BIN)/pip install -q -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/fleet.py --sizes $(BENCH_SIZES) --baseline-sizes $(BENCH_BASELINE_SIZES) $(BENCH_FLAGS)

## chaos: migrate.yml on a lab fleet of 10 under injected faults (429 + Retry-After, 500/503, connection resets, the
## federated credentials' 409, Cosmos DB's 412, a principal not replicated yet), then killed at seeded-random points
## (CHAOS_SEED, CHAOS_KILLS) and re-run: both must converge; the counts go to tests/output/chaos.{json,md}.
chaos: venv system-packages
	@status=0; $(PYTEST) -q tests/chaos || status=$$?; cat tests/output/chaos.md 2>/dev/null; exit $$status

clean: lab-down
	rm -rf $(LAB_STATE_DIR) .lab-molecule tests/output
