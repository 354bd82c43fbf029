# The two commands of the README. Both create/refresh .venv first from requirements/dev.lock (idempotent).
.PHONY: demo test env zoo lock upgrade-check

env:
	@scripts/setup-env.sh

# Build the demo zoo if missing, then open the wizard on it.
demo: env
	.venv/bin/llmc-wizard demo

# Run the whole test suite, then the engine's tests under research code's transformers (4.37.2).
test: env
	.venv/bin/python -m pytest -q
	scripts/compat-tests.sh

zoo: env
	.venv/bin/llmc-wizard demo build

# Deliberate steps, never part of `make test`: try the newest releases the ranges in requirements/*.in
# allow (their own .venv-next, the whole suite; prints what changed and what broke), then adopt them.
upgrade-check: env
	python3 scripts/lock.py check

lock: env
	python3 scripts/lock.py write
