# The two commands of the README. Both set everything up first.
.PHONY: setup demo test check test-fast
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/latentlens demo

# Lint, format check, type check and the layer contract (fast; part of `make test`).
check:
	.venv/bin/ruff check latentlens dashboards
	.venv/bin/ruff format --check latentlens dashboards
	.venv/bin/lint-imports
	.venv/bin/mypy latentlens

test: setup check
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

# The development tier: everything but trained-model, notebook and browser tests (< 1 min here).
test-fast:
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -m "not slow"
