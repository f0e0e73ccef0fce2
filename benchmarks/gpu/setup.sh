#!/usr/bin/env bash
# Install carried wheels/sdists (no network there) into /tmp/site on the GPU machine.
# Usage: source benchmarks/gpu/setup.sh DIR...   (wheels fetched beforehand, see benchmarks/README.md)
# A wheel too big for one transfer travels split (`split -b 34M -d -a 1 X.whl raypart`): parts named
# raypart<N> are collected in /tmp/raywhl and installed once all parts listed in .whl/ray.sha256 are there.
for d in "$@"; do
  ls "$d"/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$d"/*.whl
  for s in "$d"/*.tar.gz; do
    [ -e "$s" ] || continue
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site "$s" >/dev/null 2>&1 \
      || echo "sdist install failed: $s"
  done
  for p in "$d"/raypart*; do [ -e "$p" ] && mkdir -p /tmp/raywhl && cp "$p" /tmp/raywhl/; done
done
if [ -e /tmp/raywhl/raypart0 ] && [ -e /tmp/raywhl/raypart1 ] && [ -e /tmp/raywhl/raypart2 ] && [ ! -e /tmp/raywhl/.done ]; then
  cat /tmp/raywhl/raypart0 /tmp/raywhl/raypart1 /tmp/raywhl/raypart2 > /tmp/raywhl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/raywhl/ray-*.whl \
    && touch /tmp/raywhl/.done && echo "ray installed"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
