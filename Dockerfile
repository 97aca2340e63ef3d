# dsrhn for the cluster runners (the Kubeflow V2 / Vertex pipeline's components and its multi-worker Trainer) and for
# `dsrhn serve`. CPU image:  docker build -t dsrhn:cpu .
# GPU image (NVIDIA GPU + driver on the host, NVIDIA container toolkit):  docker build --build-arg GPU=1 -t dsrhn:gpu .
# It installs exactly as scripts/setup.sh does (the pinned requirements, the offline ImageNet weights converted once);
# without Chromium and the tests' photos. TensorFlow's CUDA libraries come from PyPI (requirements-gpu.txt), so one
# Debian base serves both.
# BASE: any Debian 12 with Python 3.11 (a base image built with debootstrap works too: docs/pipeline.md)
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG GPU=0
# a build behind a TLS-inspecting proxy: pass its CA bundle (mounted with -v for the build) in these, e.g.
#   --build-arg SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# (build arguments, seen by the RUN steps only: nothing of them stays in the image)
ARG SSL_CERT_FILE
ARG PIP_CERT
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    DSRHN_SETUP_BROWSER=0 DSRHN_SETUP_PHOTOS=0
WORKDIR /opt/dsrhn
# the embedded default data (Fashion-MNIST) is what the pipeline's default source reads; a C++ compiler builds the one
# dependency without a wheel (pyfarmhash, through TFX), with the Python headers where the base has a system Python
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends dataset-fashion-mnist g++ \
        $( [ -x /usr/local/bin/python3 ] || echo python3-dev ) \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN if [ "$GPU" = 1 ]; then bash scripts/setup.sh --gpu; else bash scripts/setup.sh; fi \
    && rm -rf /root/.cache
ENV PATH=/opt/dsrhn/.venv/bin:$PATH
EXPOSE 8501
# `dsrhn serve` by default (mount the TF Serving layout at /models); the pipeline runners give their own command
CMD ["dsrhn", "serve", "--base-dir", "/models", "--model-name", "dsrhn", "--host", "0.0.0.0", "--port", "8501", "--faiss-device", "auto"]
