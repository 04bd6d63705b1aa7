# The two commands of the README. Both set everything up first.
.PHONY: setup demo test
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/latentlens demo

test: setup
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q
