# SegX-Slicer: `make install` creates or reuses .venv; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo serve pacs viewer benchmark clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/segx demo --out demo_output

# A server for 3D Slicer on the demo studies (make demo first) and the demo models.
PORT ?= 8000
STUDIES ?= demo_output/studies/images
serve: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH MONAI_LABEL_AUTO_UPDATE_SCORING=false monailabel start_server --app monailabel_app --studies $(STUDIES) --conf models demo2d,demo3d --host 127.0.0.1 --port $(PORT)

# A local PACS (Orthanc + DICOMweb on 127.0.0.1:8042; Debian packages orthanc and
# orthanc-dicomweb) holding the demo's 3D studies as CT series (make demo first).
# Serve it: make serve STUDIES=http://127.0.0.1:8042/dicom-web
pacs: install
	$(VENV)/bin/segx pacs --folder pacs_storage --port 8042 --load $(wildcard demo_output/studies/images/*.nii.gz)

# The OHIF web viewer on that PACS (make pacs first, in another terminal), on loopback:
# prints the URL of each study. BUILD=monailabel serves the OHIF build MONAI Label ships.
BUILD ?= ohif
viewer: install
	$(VENV)/bin/segx viewer --pacs http://127.0.0.1:8042/dicom-web --port 3000 --build $(BUILD)

benchmark: install
	$(PY) benchmarks/explain_overhead.py
	$(PY) benchmarks/server_overhead.py
	$(PY) benchmarks/evaluate_throughput.py
	$(PY) benchmarks/slicer_transfer.py

clean-venv:
	rm -rf $(VENV)
