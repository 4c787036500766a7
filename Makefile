# Fresh Debian 12 / Ubuntu 22.04+ machine, as root:
#   make demo   set up if needed, then run a container on the built-in busybox image and print its trace
#   make test   set up if needed, then run the whole suite, notebooks included
#   make test-v2  the cgroup, run and sandbox tests and every notebook again, in a qemu guest
#                 with a real cgroup v2 kernel and systemd as PID 1, like the students' VM
#   make test-browser  every notebook run in JupyterLab in Debian's chromium (Playwright): no cell
#                 errors, every trace fits its output area, the quiz answers; screenshots in browser-artifacts/
VENV := .venv
STAMP := $(VENV)/.provisioned
PY := $(VENV)/bin/python

.PHONY: setup demo test test-v2 test-browser bench bench-images compile handin labs

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

# Every test marked v2 (tests/test_cgroups.py, test_run.py, test_sandbox.py, the notebooks, the labs)
# in a guest booted from Debian's kernel with the host's systemd as PID 1: see docs/v2-guest.md.
test-v2: compile
	scripts/v2guest/run.sh --timeout 2700 -- $(PY) -m pytest -q --nbval-lax -m v2 tests notebooks

# tests/browser (left out of `make test` by pyproject's pytest options); it installs chromium,
# the CJK fonts and Playwright first
test-browser: compile
	scripts/provision.sh --browser
	$(PY) -m pytest -q tests/browser

bench: compile
	$(PY) bench/run_latency.py
	$(PY) bench/lifecycle.py
	$(PY) bench/build.py
	$(PY) bench/grading.py

# Every lab: its student copy is up to date, its solution scores full marks and its starter zero
labs: compile
	$(PY) -m grading release --check
	$(PY) -m grading validate

# layer unpack vs umoci, our registry client vs skopeo, our registry vs docker-registry (several minutes)
bench-images: compile
	$(PY) bench/unpack.py
	$(PY) bench/registry_client.py
	$(PY) bench/registry_server.py

# In the course VM: pack the student's notebooks (their workspace, see scripts/provision.sh)
# into one archive to hand in to the grader.
WORKSPACE ?= /home/vagrant/work
handin:
	@test -d $(WORKSPACE)/notebooks || { echo "handin: no workspace at $(WORKSPACE): set WORKSPACE=…" >&2; exit 1; }
	@out=handin-$$(id -un)-$$(date +%Y%m%d-%H%M).tar.gz; \
	tar -czf $$out -C $(WORKSPACE) --exclude='.ipynb_checkpoints' notebooks $$(test -d $(WORKSPACE)/labs && echo labs); \
	echo "handin: wrote $$out (hand this file in)"
