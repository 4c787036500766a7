# Fresh Debian 12 / Ubuntu 22.04+ machine, as root:
#   make demo   set up if needed, then run a container on the built-in busybox image and print its trace
#   make test   set up if needed, then run the whole suite, notebooks included
VENV := .venv
STAMP := $(VENV)/.provisioned
PY := $(VENV)/bin/python

.PHONY: setup demo test bench bench-images compile

setup: $(STAMP)

# Byte-compile the package: when PYTHONDONTWRITEBYTECODE is set (as on our CI machines),
# Python would otherwise recompile every module on every `minicontainer` call.
compile: $(STAMP)
	@$(PY) -m compileall -q minicontainer

$(STAMP): pyproject.toml scripts/provision.sh
	scripts/provision.sh

demo: compile
	$(VENV)/bin/minicontainer run --rm --trace --hostname demo busybox sh -c 'echo "hello from PID $$$$ in $$(hostname)"; ls /'

test: compile
	$(PY) -m pytest -q --nbval-lax tests notebooks

bench: compile
	$(PY) bench/run_latency.py

# layer unpack vs umoci, our registry client vs skopeo, our registry vs docker-registry (several minutes)
bench-images: compile
	$(PY) bench/unpack.py
	$(PY) bench/registry_client.py
	$(PY) bench/registry_server.py
