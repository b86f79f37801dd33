#!/usr/bin/env bash
# Set up everything idmm needs on a fresh machine: the Fashion-MNIST Debian package (when apt is
# available), a virtual environment in .venv, and idmm itself with its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== installing the Fashion-MNIST Debian package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q dataset-fashion-mnist </dev/null >/dev/null 2>&1 || {
      apt-get update -q </dev/null >/dev/null && apt-get install -y -q dataset-fashion-mnist </dev/null >/dev/null; }
  else
    echo "== Fashion-MNIST package not installed and apt-get not usable as root;"
    echo "   run: apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb DIR"
    echo "   then pass data.root=DIR/usr/share/datasets/fashion-mnist (or let torchvision download it)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing idmm (torch, torchvision, timm, ...)"
# pyproject.toml asks for ordinary ranges (torch>=2.4, torchvision); pip picks the newest pair the
# machine allows (on machines with a local wheel cache and a pip constraint, that pair).
"$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/pip" install -q -e ".[dev]"
"$VENV/bin/python" -c "import torch, torchvision, timm, idmm; print('== ready: idmm', idmm.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
