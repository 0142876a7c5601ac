# Two commands for a newcomer (see README.md). Each installs what it needs itself:
# uv (from PyPI, if missing) and then the exact locked stack from uv.lock into .venv.
UV ?= python3 -m uv

.PHONY: bootstrap demo test test-fast results bench

bootstrap:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

## The main job: a quick Ray Tune + Optuna + ASHA sweep on the embedded photographs, logged to MLflow.
demo: bootstrap
	$(UV) run --frozen echos sweep sweeps/quick.yaml

## The whole test suite, slow end-to-end tests included (what CI runs).
test: bootstrap
	$(UV) run --frozen pytest

## Everything but the slow end-to-end tests (for quick local iterations).
test-fast: bootstrap
	$(UV) run --frozen pytest -m "not slow"

## Regenerate everything in results/ (about 1.5 hours on 2 CPU cores): the On/Off study and the
## digits study (Ray Tune sweeps logged to ./mlflow.db), their reports, and the "other"-kernel analysis.
results: bootstrap
	$(UV) run --frozen echos sweep sweeps/onoff_ratio.yaml
	$(UV) run --frozen echos report onoff_ratio --out results
	$(UV) run --frozen echos other-kernels onoff_ratio --out results/other_kernels
	$(UV) run --frozen echos sweep sweeps/digits.yaml
	$(UV) run --frozen echos report digits --out results

## Speed figures (a)-(g) of issue 7, measured side by side (benchmarks/README.md); BENCH_ARGS=--device cuda on a GPU.
bench: bootstrap
	$(UV) run --frozen python benchmarks/bench.py $(BENCH_ARGS)
