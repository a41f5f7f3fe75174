PYTHON ?= python3

.PHONY: install demo lint test bench accuracy
install:
	$(PYTHON) -m pip install -q -r requirements.txt

demo: install
	$(PYTHON) posterior_sample.py

lint: install
	$(PYTHON) -m ruff check .

test: lint
	$(PYTHON) -m pip install -q -r requirements-launchers.txt
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) -m commands.benchmark

accuracy: install
	$(PYTHON) -m commands.accuracy
