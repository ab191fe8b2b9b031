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
# the daemon runs as python -OO with its bytecode cached in $XDG_CACHE_HOME/vehicle-edge/bytecode
# (the recipe sets XDG_CACHE_HOME={work:path}/cache; edge.process): compile the stdlib and
# the venv into it now, so the first start after a deployment compiles nothing
BYTECODE="$WORK/cache/vehicle-edge/bytecode"
mkdir -p "$BYTECODE" && chmod 700 "$BYTECODE"
STDLIB=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PYTHONPYCACHEPREFIX="$BYTECODE" "$VENV/bin/python" -OO -m compileall -qq -j0 \
    -x '/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip|site-packages|dist-packages)/' \
    "$STDLIB" || echo "bytecode: some of $STDLIB did not compile" >&2
# the venv twice: into that cache, and next to its sources, where a daemon looks when
# PYTHONDONTWRITEBYTECODE is set in its environment (it then uses no cache folder)
for PREFIX in "$BYTECODE" ""; do
    PYTHONPYCACHEPREFIX="$PREFIX" "$VENV/bin/python" -OO -m compileall -qq -j0 \
        -x '/(pip|setuptools|pkg_resources|_distutils_hack)/' \
        "$SITE" || echo "bytecode: some of $SITE did not compile" >&2
done
# the daemon starts right after this with no reboot: drop the libraries pip just wrote from
# the page cache, where recent kernels keep them in large folios that a process mapping
# them counts whole (~6 MB more RSS), so they are read in as after a boot
"$VENV/bin/python" -m edge.pagecache "$VENV" || echo "page cache: left as it is" >&2
touch "$VENV/.complete"
rm -rf "$WH"
# keep the previous version for a rollback, remove older ones (and their bytecode)
ls -d "$WORK"/venv-* 2>/dev/null | grep -v "/venv-$VERSION\$" | sort -V | head -n -1 |
    while IFS= read -r OLD; do rm -rf "$OLD" "$BYTECODE$OLD"; done
echo "vehicle-edge $VERSION installed in $VENV"
