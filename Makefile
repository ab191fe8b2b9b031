# vehicle-edge — `make run` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge
DRIVE ?= sim/drives/city
RUN_CONFIG ?= $(DRIVE)/config.toml
BROKER_PORT ?= 1883
export VEHICLE_EDGE_CACHE ?= $(HOME)/.cache/vehicle-edge

.PHONY: help venv deps system-deps run test test-fast lint bench chaos components greengrass testdata clean

help:
	@echo "make run         daemon in simulator mode on $(DRIVE), publishing to a local broker"
	@echo "make test        the whole test suite (installs what it needs)"
	@echo "make lint        ruff + mypy"
	@echo "make bench       benchmarks: one table, results in bench/results.json"
	@echo "make chaos       fault suite with a delivery ledger"
	@echo "make components  Greengrass artifacts and recipes into build/greengrass/"
	@echo "                 (com.vehicleedge.Roads from ROADS_EXTRACT=x.osm.pbf ROADS_REGION=name"
	@echo "                 [ROADS_BBOX=W,S,E,N]; default: the cached Helsinki extract)"
	@echo "make greengrass  deploy them on a real nucleus lite (../shared/greengrass-lite, root)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: sudo apt-get install -y python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# what pip just wrote sits in the page cache in large folios on recent kernels: a
	@# daemon mapping those libraries would count ~6 MB more RSS than after a boot
	$(PY) -m edge.pagecache $(VENV) || echo "page cache: left as it is"
	@touch $@

# daemons run as python -OO (edge.process) and pip writes only the plain bytecode: the -OO
# one, next to the venv's and the checkout's sources (again after an edit), which is what a
# daemon loads where PYTHONDONTWRITEBYTECODE is set (this machine; elsewhere it fills its
# own cache folder at its first start): compiling ~500 modules at each start keeps ~1.2 MB
# of the compiler's leftovers in its heap
$(VENV)/.bytecode-opt2: $(VENV)/.installed $(wildcard edge/*.py edge/*/*.py sim/*.py)
	$(PY) -OO -m compileall -qq -j0 $(VENV)/lib edge sim || echo "bytecode: some files did not compile"
	@touch $@

venv: $(VENV)/.installed $(VENV)/.bytecode-opt2

# Mosquitto (broker + clients) and openssl from the distribution when missing.
system-deps:
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "installing mosquitto (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto mosquitto-clients openssl >/dev/null; \
	fi

deps: venv system-deps

testdata: venv
	-$(PY) scripts/fetch_testdata.py

run: deps
	@if ! (exec 3<>/dev/tcp/127.0.0.1/$(BROKER_PORT)) 2>/dev/null; then \
	  echo "starting a local mosquitto on 127.0.0.1:$(BROKER_PORT)"; \
	  PATH=$$PATH:/usr/sbin mosquitto -p $(BROKER_PORT) -d; sleep 0.5; \
	fi
	@echo "watch it: mosquitto_sub -h localhost -p $(BROKER_PORT) -t 'vehicles/#' -v"
	$(EDGE) sim $(DRIVE) --config $(RUN_CONFIG) --rate $${RATE:-5}

test: deps testdata
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests ran: failing"; exit 1; fi; exit $$rc

lint: venv
	$(VENV)/bin/ruff check edge sim tests bench scripts
	$(VENV)/bin/mypy

bench: deps
	$(PY) -m bench

chaos: deps
	$(PY) -m pytest -q -p no:cacheprovider tests/chaos -m chaos --chaos-full

# com.vehicleedge.Roads: the road index of one region (ROADS_EXTRACT, ROADS_REGION, ROADS_BBOX)
components: venv
	$(PY) scripts/build_components.py --out build/greengrass $(if $(BUCKET),--bucket $(BUCKET)) \
	  $(if $(ROADS_EXTRACT),--roads-extract $(ROADS_EXTRACT)) $(if $(ROADS_REGION),--roads-region $(ROADS_REGION)) \
	  $(if $(ROADS_BBOX),--roads-bbox $(ROADS_BBOX)) $(COMPONENT_ARGS)

# The system test on a real Greengrass nucleus lite 2.6.0 (systemd-nspawn, needs root):
# builds the components, boots gg-lite, deploys Zones + Daemon + Simulator, checks, and
# powers it off (also when interrupted).
GG_LITE ?= $(abspath ..)/shared/greengrass-lite/gg-lite
greengrass: components
	@test -x "$(GG_LITE)" || { echo "make greengrass: $(GG_LITE) not found (GG_LITE=...)"; exit 1; }
	@trap '"$(GG_LITE)" down >/dev/null 2>&1 || true' EXIT INT TERM; \
	  GG_LITE="$(GG_LITE)" $(PY) -m pytest -q -p no:cacheprovider -s tests/greengrass --greengrass -m greengrass

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
