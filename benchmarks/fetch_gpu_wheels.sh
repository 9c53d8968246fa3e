#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels the bare GPU machine lacks into .whl/
# (ignored by git; carry it to the device). Python 3.12, manylinux x86_64: that machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "pycocotools>=2.0.7"
ls -l .whl
