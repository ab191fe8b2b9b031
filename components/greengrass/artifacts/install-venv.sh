#!/bin/sh
# Greengrass install step shared by com.vehicleedge.Daemon and com.vehicleedge.Simulator.
# Creates {work:path}/venv-<version> from the offline wheelhouse artifact: never reaches PyPI.
#   usage: sh install-venv.sh ARTIFACTS_DIR WORK_DIR ARCH VERSION
set -eu
ART=$1 WORK=$2 ARCH=$3 VERSION=$4
VENV="$WORK/venv-$VERSION"
if [ -x "$VENV/bin/edge" ] && [ -f "$VENV/.complete" ]; then
    echo "vehicle-edge $VERSION already installed in $VENV"; exit 0
fi
PY=$(command -v python3.11 || command -v python3 || true)
if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "vehicle-edge needs CPython 3.11 (the wheelhouse is built for cp311); found: ${PY:-none}" >&2
    exit 1
fi
WH="$WORK/wheelhouse-$VERSION-$ARCH"
rm -rf "$WH" "$VENV"
"$PY" -m zipfile -e "$ART/wheelhouse-$ARCH.zip" "$WH"
if [ -s "$WH/MISSING.txt" ]; then
    # PyPI has no wheel for these on this architecture: take them from the OS instead
    echo "wheelhouse-$ARCH lacks wheels for (using system site-packages):" >&2
    cat "$WH/MISSING.txt" >&2
    "$PY" -m venv --system-site-packages "$VENV"
else
    "$PY" -m venv "$VENV"
fi
# the wheelhouse holds exactly one vehicle-edge wheel: the component version (a deployment
# may bump it without a new package, e.g. GDK's NEXT_PATCH) is not the package's
"$VENV/bin/python" -m pip install --no-index --find-links "$WH" --no-cache-dir --disable-pip-version-check \
    vehicle-edge
# bytecode caches for `python -OO` as well (pip writes only the plain ones): a daemon run
# optimised finds no fitting cache otherwise and compiles every module from source at
# each start (a read-only install, or PYTHONDONTWRITEBYTECODE, never writes one): slower,
# and the compiler's leftovers stay in the heap (bench, encrypted CAN daemon under -OO:
# 67.8 MB without these caches, 66.5 MB with them)
"$VENV/bin/python" -m compileall -q -o 2 \
    "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    >/dev/null || echo "some modules of $VENV have no -OO bytecode cache" >&2
touch "$VENV/.complete"
rm -rf "$WH"
# keep the previous version for a rollback, remove older ones
ls -d "$WORK"/venv-* 2>/dev/null | grep -v "/venv-$VERSION\$" | sort -V | head -n -1 | xargs -r rm -rf
echo "vehicle-edge $VERSION installed in $VENV"
