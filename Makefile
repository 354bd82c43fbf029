# The two commands of the README. Both create/refresh .venv first (idempotent).
.PHONY: demo test env zoo clean-zoo

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
