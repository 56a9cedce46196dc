# `make run` and `make test` set up everything they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test bench venv system-deps test-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# Debian packages the browser tests and benchmarks use (root on these machines).
system-deps:
	@missing=""; \
	for pair in chromium:chromium espeak-ng:espeak-ng sox:sox pdftotext:poppler-utils ip:iproute2; do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

run: venv
	./scripts/run.sh

test: venv system-deps
	./scripts/test.sh

bench: venv system-deps
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) var staticfiles
