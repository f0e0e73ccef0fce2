#!/usr/bin/env bash
# Install carried wheels/sdists (no network there) into /tmp/site on the GPU machine.
# Usage: source benchmarks/gpu/setup.sh DIR...   (wheels fetched beforehand, see benchmarks/README.md)
# A wheel too big for one transfer travels split (ray: `split -b 34M -d -a 1 X.whl raypart`, .whl/r1..r3; vllm:
# `split -b 51M -d -a 1 X.whl vllmpart`, .whl/v1..v6), each folder holding the manifest <name>.parts.sha256
# (`sha256sum <parts in join order> X.whl`): the parts are collected in /tmp/wheelparts; the wheel is joined, checked
# against the manifest and installed once every listed part is there (one line says which are missing).
for d in "$@"; do
  ls "$d"/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$d"/*.whl
  for s in "$d"/*.tar.gz; do
    [ -e "$s" ] || continue
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site "$s" >/dev/null 2>&1 \
      || echo "sdist install failed: $s"
  done
  for m in "$d"/*.parts.sha256; do
    [ -e "$m" ] || continue
    mkdir -p /tmp/wheelparts && cp "$m" /tmp/wheelparts/
    for p in $(awk '$2 !~ /\.whl$/ {print $2}' "$m"); do [ -e "$d/$p" ] && cp "$d/$p" /tmp/wheelparts/; done
  done
done
for m in /tmp/wheelparts/*.parts.sha256; do
  [ -e "$m" ] || continue
  whl=$(awk '$2 ~ /\.whl$/ {print $2}' "$m"); parts=$(awk '$2 !~ /\.whl$/ {print $2}' "$m")
  [ -e "/tmp/wheelparts/$whl.done" ] && continue
  missing=$(for p in $parts; do [ -e "/tmp/wheelparts/$p" ] || echo "$p"; done)
  if [ -n "$missing" ]; then echo "$whl: waiting for" $missing; continue; fi
  (cd /tmp/wheelparts && cat $parts > "$whl" && sha256sum -c --quiet "$(basename "$m")") \
    && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "/tmp/wheelparts/$whl" \
    && touch "/tmp/wheelparts/$whl.done" && echo "$whl installed" || echo "$whl: join, check or install failed"
done
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
