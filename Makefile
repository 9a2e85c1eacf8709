# omniroute — developer entry points. Needs only python3 (>= 3.11) and make.
#
#   make run     start the service on the embedded store (data under ./var/mongo)
#   make test    the test suite (an ephemeral embedded store, or $OMNIROUTE_TEST_MONGODB_URI;
#                installs Dovecot from Debian when missing)
#   make lint    ruff check, ruff format --check, mypy --strict
#   make bench   the benchmarks
#   make soak    the slow multi-process and crash drills only
#   make clean   caches and build leftovers (`make distclean` also removes .venv)
#
# The virtualenv is (re)installed only when pyproject.toml changes: the install leaves a
# stamp named after the file's hash.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= embedded,test
PYTEST_ARGS ?=
ARGS ?=

comma := ,
PYPROJECT_HASH := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest()[:16])")
STAMP := $(VENV)/.installed-$(PYPROJECT_HASH)-$(subst $(comma),_,$(EXTRAS))

.DEFAULT_GOAL := help
.PHONY: help venv run test test-system lint bench soak clean distclean

help:
	@sed -n 's/^#   //p' Makefile

venv: $(STAMP)

# secantusdb is pinned to an exact pre-release (==0.7.0b3): pip accepts a pre-release
# that the specifier names explicitly, so no --pre (which would let every other
# dependency float to pre-releases too).
$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "omniroute needs Python >= 3.11; run: make PYTHON=python3.11 ...")'
	@if [ ! -x $(BIN)/python ]; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		$(PYTHON) -m venv $(VENV) || { \
			echo "could not create $(VENV): on Debian/Ubuntu install python3-venv" >&2; exit 1; }; \
	fi
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# A development secret for the example site form, unless you set your own.
run: venv
	OMNIROUTE_SECRET_API_SITE="$${OMNIROUTE_SECRET_API_SITE:-dev-site-secret}" \
		$(BIN)/omniroute serve $(ARGS)

# Debian packages the tests run for real: Dovecot (the IMAP server of the e-mail tests),
# nginx (`nginx -t` on deploy/nginx.conf). Installed once when missing (as root, or sudo).
TEST_DEB_PACKAGES ?= dovecot-imapd nginx chromium

test-system:
	@missing=""; for p in $(TEST_DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null || { \
			echo "could not install$$missing (needs root or sudo)" >&2; exit 1; }; \
	fi

# Exit code 5 means pytest collected nothing: always a mistake here (wrong directory,
# a marker that deselects everything), so it fails like any other non-zero status.
test: venv test-system
	@rc=0; $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv test-system
	$(BIN)/python -m benchmarks $(ARGS)

soak: venv test-system
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
