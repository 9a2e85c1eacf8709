# omniroute — developer entry points. Needs only python3 (>= 3.11) and make.
#
#   make run     start the service on the embedded store (data under ./var/mongo)
#   make test    the test suite (an ephemeral embedded store, or $OMNIROUTE_TEST_MONGODB_URI;
#                installs Dovecot from Debian when missing; TEST_WORKERS=2 processes)
#   make lint    ruff check, ruff format --check, mypy --strict
#   make bench   the benchmarks
#   make soak    the slow multi-process and crash drills only
#   make clean   caches and build leftovers (`make distclean` also removes .venv)
#
# `make run` installs only what running needs (the embedded store: RUN_EXTRAS); `make test`,
# `lint`, `bench` and `soak` add the test tools (TEST_EXTRAS); `make venv EXTRAS=...` installs
# any set. The virtualenv is (re)installed only when pyproject.toml changes or a target needs
# extras not installed yet: each install leaves a stamp named after the file's hash and the
# extras, and installing the test set also satisfies `run` (it contains the run set).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_EXTRAS ?= embedded
TEST_EXTRAS ?= embedded,test
EXTRAS ?= $(TEST_EXTRAS)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (0: in one process). Each worker runs its own
# embedded store; two keep both cores busy (one process leaves one idle: ~21 -> ~13 min).
TEST_WORKERS ?= 2
ARGS ?=

comma := ,
PYPROJECT_HASH := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest()[:16])")
stamp = $(VENV)/.installed-$(PYPROJECT_HASH)-$(subst $(comma),_,$(1))
STAMP := $(call stamp,$(EXTRAS))
RUN_STAMP := $(call stamp,$(RUN_EXTRAS))
TEST_STAMP := $(call stamp,$(TEST_EXTRAS))

.DEFAULT_GOAL := help
.PHONY: help venv run test test-system lint bench soak clean distclean

help:
	@sed -n 's/^#   //p' Makefile

venv: $(STAMP)

# secantusdb is pinned to an exact pre-release (==0.7.0b3): pip accepts a pre-release
# that the specifier names explicitly, so no --pre (which would let every other
# dependency float to pre-releases too).
# One rule for every stamp: the extras are the stamp name's last part ("embedded_test").
# Stamps of an older pyproject.toml are removed; the test set's install also stamps the run
# set. A stamp is written only after pip succeeded.
$(VENV)/.installed-$(PYPROJECT_HASH)-%:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "omniroute needs Python >= 3.11; run: make PYTHON=python3.11 ...")'
	@if [ ! -x $(BIN)/python ]; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		$(PYTHON) -m venv $(VENV) || { \
			echo "could not create $(VENV): on Debian/Ubuntu install python3-venv" >&2; exit 1; }; \
	fi
	$(BIN)/python -m pip install -e '.[$(subst _,$(comma),$*)]'
	@find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '.installed-$(PYPROJECT_HASH)-*' -delete
	@touch $@
	@if [ '$@' = '$(TEST_STAMP)' ]; then touch $(RUN_STAMP); fi

# A development secret for the example site form, unless you set your own.
run: $(RUN_STAMP)
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
test: $(TEST_STAMP) test-system
	@rc=0; $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal \
		$(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(TEST_STAMP) test-system
	$(BIN)/python -m benchmarks $(ARGS)

soak: $(TEST_STAMP) test-system
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
