#!/usr/bin/env bash
# Install carried wheels/sdists (no network) into /tmp/site on the GPU machine. Usage: source benchmarks/gpu_setup.sh DIR...
# Wheels are fetched beforehand on a machine with the registry (see benchmarks/README.md).
for d in "$@"; do
  ls "$d"/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$d"/*.whl
  for s in "$d"/*.tar.gz; do
    [ -e "$s" ] || continue
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site "$s" >/dev/null 2>&1 \
      || echo "sdist install failed: $s"
  done
done
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
