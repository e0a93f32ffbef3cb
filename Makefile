# beamops.release: every entry point a user or CI needs. Each target installs what it needs itself.
#   make demo   boot test hosts, build the sample release, deploy it blue-green
#   make test   the full suite (unit, lint, real test hosts, molecule); ends with pytest's summary
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
N ?= 2
VERSION ?= 0.1.0
STAMP := $(CURDIR)/build/stamps
HARNESS := $(BIN)/python $(CURDIR)/tests/harness/testhosts.py
STAGE := $(CURDIR)/tests/tools/stage.sh
# Debian packages the controller needs: venv for the toolchain, nspawn + mmdebstrap for the
# test hosts, Elixir to build the sample release, ssh to reach the hosts, haproxy for the
# haproxy_slot unit tests (run as a plain process, never as the system service), shellcheck for
# ansible-test sanity.
APT_PACKAGES := python3-venv python3-pip systemd-container mmdebstrap openssh-client iproute2 \
	util-linux elixir erlang-dev curl ca-certificates git make haproxy shellcheck

# Collections are looked up here: build/collections/ansible_collections/beamops/release -> repo.
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(BIN):$(PATH)

.PHONY: help deps venv collection promtool oldest-core image hosts down release demo test unit lint bench clean \
	docs changelog

help:
	@sed -n '2,3p' Makefile | sed 's/^# *//'
	@echo "  make lint | docs | bench | hosts N=3 | down | release VERSION=x.y.z | changelog | clean"

$(STAMP):
	@mkdir -p $@

deps: $(STAMP)/deps
$(STAMP)/deps: | $(STAMP)
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
	  | awk '$$NF != "installed" {print $$1}'; for p in $(APT_PACKAGES); do \
	  dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
	  echo "[deps] apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	else echo "[deps] Debian packages present"; fi
	@touch $@

venv: $(STAMP)/venv
$(STAMP)/venv: requirements.txt constraints.txt $(STAMP)/deps
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
	@touch $@

# promtool (Prometheus' rule checker and rule unit tests) from Debian's prometheus package,
# unpacked without installing it: installing would start a Prometheus server on this machine.
PROMTOOL := $(CURDIR)/build/tools/promtool
promtool: $(PROMTOOL)
$(PROMTOOL): $(STAMP)/deps
	@rm -rf $(CURDIR)/build/tools/prometheus-deb && mkdir -p $(CURDIR)/build/tools/prometheus-deb
	@cd $(CURDIR)/build/tools/prometheus-deb && apt-get download -qq prometheus 2>/dev/null \
	  && dpkg-deb -x prometheus_*.deb root && rm -f prometheus_*.deb
	@ln -sfn $(CURDIR)/build/tools/prometheus-deb/root/usr/bin/promtool $@
	@$@ --version | sed -n 1p

# The oldest ansible-core requires_ansible claims, in a venv of its own for the oldest-core
# scenario (the main venv has the newest): tests/matrix/ pins it and what it pulls in.
OLDEST_CORE := $(CURDIR)/build/tools/ansible-core-2.19.4
oldest-core: $(STAMP)/oldest-core
$(STAMP)/oldest-core: tests/matrix/ansible-core-2.19.4.txt $(STAMP)/deps
	@[ -x $(OLDEST_CORE)/bin/python ] || $(PYTHON) -m venv $(OLDEST_CORE)
	@$(OLDEST_CORE)/bin/python -m pip install -q --disable-pip-version-check \
	  -r tests/matrix/ansible-core-2.19.4.txt
	@$(OLDEST_CORE)/bin/ansible --version | sed -n 1p
	@touch $@

collection: $(CURDIR)/build/collections/ansible_collections/beamops/release
$(CURDIR)/build/collections/ansible_collections/beamops/release:
	@mkdir -p $(dir $@) $(CURDIR)/build/mypy_path/ansible_collections/beamops
	@ln -sfn $(CURDIR) $@
	@ln -sfn $(CURDIR) $(CURDIR)/build/mypy_path/ansible_collections/beamops/release

image: venv
	@$(HARNESS) build

hosts: venv image
	@$(HARNESS) up $(N)

down:
	@if [ -x $(BIN)/python ]; then $(HARNESS) down; else $(PYTHON) tests/harness/testhosts.py down; fi

release: deps
	@examples/sample_app/build.sh $(VERSION) $(CURDIR)/build/releases

demo: venv collection image
	@$(BIN)/python tests/tools/demo.py

unit: venv collection promtool
	@$(BIN)/pytest tests/unit -q --cov --cov-report=term-missing:skip-covered

lint: venv collection
	@$(BIN)/pytest tests/lint -q

# The collection's documentation site (antsibull-docs + Sphinx, warnings as errors) in
# build/docs/build/html. Built offline: no intersphinx inventories (docs.ansible.com and
# docs.python.org are out of reach), so references into them stay plain text; the
# collection's own references are checked by antsibull-docs lint-collection-docs (make lint).
docs: venv collection
	@rm -rf $(CURDIR)/build/docs && install -d -m 0755 $(CURDIR)/build/docs
	@$(BIN)/antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error \
	  --dest-dir $(CURDIR)/build/docs beamops.release >/dev/null
	@printf '%s\n' '' 'intersphinx_mapping = {}' 'suppress_warnings = ["ref.ref"]' \
	  >> $(CURDIR)/build/docs/conf.py
	@cd $(CURDIR)/build/docs && ./build.sh >/dev/null
	@echo "[docs] $(CURDIR)/build/docs/build/html/index.html"

# A release of the changelog: changelogs/fragments/ become CHANGELOG.rst's section for the
# version in galaxy.yml (maintainers, when they tag a release).
changelog: venv
	@$(BIN)/antsibull-changelog release

bench: venv collection image
	@$(BIN)/python bench/run.py

# Stages are timed by tests/tools/stage.sh; the times are printed again in pytest's summary.
test: collection
	@rm -f build/stage-times.txt
	@$(STAGE) deps $(MAKE) --no-print-directory deps
	@$(STAGE) venv $(MAKE) --no-print-directory venv
	@$(STAGE) image $(MAKE) --no-print-directory image
	@$(STAGE) promtool $(MAKE) --no-print-directory promtool
	@$(STAGE) oldest-core $(MAKE) --no-print-directory oldest-core
	@$(BIN)/pytest tests --durations=15

clean: down
	@rm -rf build dist tests/output
