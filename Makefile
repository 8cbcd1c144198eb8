# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/pip --disable-pip-version-check -q

.PHONY: demo test lint install sysdeps bench screenshots clean

$(STAMP): setup.cfg pyproject.toml ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU wheel (a local file here; elsewhere pip fetches your platform's build)
	$(PIP) install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch" 
	$(PIP) install -c ci/constraints.txt -e ".[testing]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import napari_mran, napari, tifffile, zarr, openslide, pytestqt, importlinter, mypy"
	touch $(STAMP)

install: $(STAMP)

# Xvfb + the two xcb libraries Qt needs to draw napari's canvas (see docs/install.md).
sysdeps:
	@if command -v Xvfb >/dev/null 2>&1 && ldconfig -p | grep -q libxcb-icccm.so.4 && ldconfig -p | grep -q libxcb-keysyms.so.1; then \
		echo "system packages for GUI tests: present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			xvfb xauth libxcb-icccm4 libxcb-keysyms1 libgl1 libglx-mesa0 libgl1-mesa-dri libegl1 \
			libxkbcommon-x11-0 libxcb-cursor0 libxcb-image0 libxcb-randr0 libxcb-render-util0 \
			libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libfontconfig1 libdbus-1-3 >/dev/null; \
	else \
		echo "WARNING: Xvfb/libxcb missing and not root: GUI tests will be skipped"; \
	fi

test: install sysdeps lint
	QT_QPA_PLATFORM=xcb $(BIN)/python -m pytest -q

# import contracts (pyproject.toml [tool.importlinter]) and types of the core ([tool.mypy])
lint: install
	$(BIN)/lint-imports
	$(BIN)/mypy

demo: install
	$(BIN)/python -m napari_mran.demo

bench: install
	$(BIN)/python benchmarks/bench_read.py

screenshots: install sysdeps
	$(BIN)/python scripts/make_screenshots.py
	$(BIN)/python scripts/screenshot_roi.py
	$(BIN)/python scripts/screenshot_reading_aids.py
	$(BIN)/python scripts/screenshot_stain_preview.py

clean:
	rm -rf $(VENV) build *.egg-info demo-output
