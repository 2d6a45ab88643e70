# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test test-fast lint peers viewer images clean

# the model extras too: the tests run every kind of model (bundles, nnU-Net, ONNX) beside its reference
$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ainode needs Python 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bundle,onnx,nnunet]'
	touch $@

install: $(BIN)/.installed

# The real peers the tests talk to: DCMTK (storescu, storescp, echoscu), Orthanc with DICOMweb (a PACS),
# dicom3tools' dciodvfy (the validator), Chromium with its driver and nginx (OHIF in a browser, served with
# the compose file's site configuration), PostgreSQL (the queue shared by several workers), and Debian's
# Docker engine, docker-compose and debootstrap (the compose file started for real, on a locally made base).
peers:
	@command -v storescu >/dev/null && command -v storescp >/dev/null && command -v echoscu >/dev/null && \
		command -v dciodvfy >/dev/null && command -v Orthanc >/dev/null && command -v chromedriver >/dev/null && \
		command -v nginx >/dev/null && command -v ip >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
		test -x /usr/sbin/dockerd && command -v docker-compose >/dev/null && test -x /usr/sbin/debootstrap || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		dcmtk dicom3tools orthanc orthanc-dicomweb chromium chromium-driver nginx postgresql iproute2 \
		docker.io docker-compose debootstrap; }

demo: install
	$(BIN)/ainode demo

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

# The OHIF viewer the browser test uses (npm registry, pinned in tests/test_ohif.py), fetched before the
# tests run in a network namespace of their own (tests/isolated).
viewer: install
	$(BIN)/python -c 'import sys; sys.path[:0] = ["tests"]; from test_ohif import fetch_ohif; fetch_ohif()'

# The images docker/compose.yaml runs (tests/test_compose.py), built before the tests' network namespace:
# the wheelhouse (PyPI), the base image (debootstrap) and the Debian packages inside the images.
images: install
	$(BIN)/python -c 'import sys; sys.path[:0] = ["tests"]; from test_compose import images; images()'

test: install peers lint viewer images
	tests/isolated $(BIN)/python -m pytest

test-fast: install peers
	tests/isolated $(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) demo-output .pytest_cache
