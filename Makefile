# Two commands for a newcomer (see README.md). Each installs what it needs itself:
# uv (from PyPI, if missing) and then the exact locked stack from uv.lock into .venv.
UV ?= python3 -m uv

.PHONY: bootstrap demo test test-fast results results-v1 results-v2 bench fashion-mnist

bootstrap:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

## The main job: DoG vs Kaiming vs default init with paired seeds, then Optuna + ASHA, on the embedded
## photographs; a Ray Tune sweep logged to MLflow that ends with the paired differences and the UI link.
demo: bootstrap
	$(UV) run --frozen echos sweep sweeps/demo.yaml

## The whole test suite, slow end-to-end tests included (what CI runs).
test: bootstrap
	$(UV) run --frozen pytest

## Everything but the slow end-to-end tests (for quick local iterations).
test-fast: bootstrap
	$(UV) run --frozen pytest -m "not slow"

## Regenerate everything in results/: the first study (results-v1) and the version-2 studies (results-v2).
results: results-v1 results-v2

## The first study (about an hour on 2 CPU cores): the On/Off study and the digits study (Ray Tune sweeps
## logged to ./mlflow.db), their reports, and the "other"-kernel analysis.
results-v1: bootstrap
	$(UV) run --frozen echos sweep sweeps/onoff_ratio.yaml
	$(UV) run --frozen echos report sweeps/onoff_ratio.yaml --out results
	$(UV) run --frozen echos other-kernels onoff_ratio --out results/other_kernels
	$(UV) run --frozen echos sweep sweeps/digits.yaml
	$(UV) run --frozen echos report sweeps/digits.yaml --out results

## The version-2 E/I studies (results/v2/PLAN.md; durations measured there): the Fashion-MNIST pilot, then the
## four declared studies, each a fixed-budget grid with 10 paired seeds, each report into results/v2/NAME/.
V2_STUDIES = pilot_fashion ei_fashion_convmixer ei_digits_small ei_fashion_convnext ei_embedded_match
results-v2: bootstrap fashion-mnist
	@for s in $(V2_STUDIES); do \
	  $(UV) run --frozen echos sweep sweeps/v2/$$s.yaml && \
	  $(UV) run --frozen echos report sweeps/v2/$$s.yaml --out results/v2 || exit 1; \
	done

## Fashion-MNIST (data.name: fashion_mnist) from Debian's dataset-fashion-mnist package, installed with apt when
## missing. Without apt: put the four idx files (plain or .gz) in a folder and set data.root, or data.download: true.
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if ls $(FASHION_MNIST)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
	  echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist && \
	  echo "Fashion-MNIST: $(FASHION_MNIST)"; \
	else \
	  echo "Fashion-MNIST is not in $(FASHION_MNIST) and apt-get is not available here: put the four idx files" \
	       "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte;" \
	       "plain or .gz) in a folder and set data.root to it, or set data.download: true where a network exists." >&2; \
	  exit 1; \
	fi


## Speed figures (a)-(g) of issue 7, measured side by side (benchmarks/README.md); BENCH_ARGS=--device cuda on a GPU.
bench: bootstrap
	$(UV) run --frozen python benchmarks/bench.py $(BENCH_ARGS)
