#!/usr/bin/env bash
# Build KenLM's `lmplz` (estimates an ARPA n-gram model) and `build_binary` (turns it into a
# memory-mapped binary) from the kenlm sdist on PyPI. The `kenlm` Python module that pip
# installs can only score; training needs these two programs, which no wheel ships.
#
#   scripts/build_lmplz.sh [DEST]        DEST defaults to third_party/kenlm (gitignored)
#
# Needs cmake, a C++ compiler and Debian's boost (program_options, system, thread, test),
# zlib, bz2 and lzma dev packages. Missing ones are installed with apt-get when running as
# root (or with passwordless sudo); otherwise the script stops and prints the apt command.
# Result: DEST/bin/{lmplz,build_binary} and DEST/bin/VERSION. kiln finds them there, or
# wherever KILN_LMPLZ / KILN_BUILD_BINARY point.
set -euo pipefail

KENLM_VERSION=0.3.0
DEST=${1:-third_party/kenlm}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
BIN="$DEST/bin"
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
BIN="$DEST/bin"

say() { echo "build_lmplz: $*"; }
die() { echo "build_lmplz: error: $*" >&2; exit 1; }

if [ -x "$BIN/lmplz" ] && [ -x "$BIN/build_binary" ] && grep -qx "kenlm $KENLM_VERSION" "$BIN/VERSION" 2>/dev/null; then
    say "lmplz and build_binary are already built in $BIN"
    exit 0
fi

# ---- system packages ------------------------------------------------------------------
PACKAGES=(cmake g++ make libboost-program-options-dev libboost-system-dev libboost-thread-dev
          libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)
missing=()
if command -v dpkg >/dev/null 2>&1; then
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
else
    # Not Debian: check for the tools and headers instead and let cmake report the rest.
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v c++ >/dev/null 2>&1 || missing+=(g++)
    [ -e /usr/include/boost/program_options.hpp ] || [ -e /usr/local/include/boost/program_options.hpp ] \
        || missing+=(boost-devel)
fi
if [ ${#missing[@]} -gt 0 ]; then
    APT="apt-get install -y --no-install-recommends ${missing[*]}"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
    fi
    if ! command -v apt-get >/dev/null 2>&1 || [ "$SUDO" = none ]; then
        die "missing build packages: ${missing[*]}. Install them (Debian/Ubuntu: sudo apt-get update && sudo $APT), then run \`make lmplz\` again."
    fi
    say "installing ${missing[*]}"
    # Wait for the dpkg lock rather than failing when another apt run holds it.
    if ! { $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq \
           && DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"; } >"$DEST/apt.log" 2>&1; then
        tail -5 "$DEST/apt.log" >&2 || true
        die "apt-get could not install ${missing[*]} (log: $DEST/apt.log). Install them yourself (sudo apt-get update && sudo $APT), then run \`make lmplz\` again."
    fi
fi

# ---- source -----------------------------------------------------------------------------
SRC="$DEST/src"
SDIST="$SRC/kenlm-$KENLM_VERSION.tar.gz"
mkdir -p "$SRC"
if [ ! -f "$SDIST" ]; then
    say "downloading the kenlm $KENLM_VERSION sdist from PyPI"
    # pip prepares the sdist's metadata after downloading it; without build isolation it uses
    # the environment's setuptools instead of fetching and building build requirements.
    "$PYTHON" -m pip download --quiet --no-deps --no-binary kenlm --no-build-isolation \
        "kenlm==$KENLM_VERSION" -d "$SRC" 2>"$SRC/pip.log" \
    || "$PYTHON" -m pip download --quiet --no-deps --no-binary kenlm "kenlm==$KENLM_VERSION" -d "$SRC" 2>>"$SRC/pip.log" \
    || { tail -5 "$SRC/pip.log" >&2; die "could not download kenlm==$KENLM_VERSION from PyPI (log: $SRC/pip.log)"; }
fi
rm -rf "$SRC/kenlm-$KENLM_VERSION"
tar -xzf "$SDIST" -C "$SRC"

# ---- build ------------------------------------------------------------------------------
BUILD="$SRC/build"
rm -rf "$BUILD"
say "building lmplz and build_binary (about a minute on 2 cores; log: $BUILD/build.log)"
mkdir -p "$BUILD"
JOBS=$( (nproc 2>/dev/null || echo 2) | head -1)
if ! { cmake -S "$SRC/kenlm-$KENLM_VERSION" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCOMPILE_TESTS=OFF \
           -DENABLE_PYTHON=OFF \
       && cmake --build "$BUILD" --target lmplz build_binary -j "$JOBS"; } >"$BUILD/build.log" 2>&1; then
    tail -15 "$BUILD/build.log" >&2
    die "the kenlm build failed (log: $BUILD/build.log)"
fi
mkdir -p "$BIN"
cp "$BUILD/bin/lmplz" "$BUILD/bin/build_binary" "$BIN/"
echo "kenlm $KENLM_VERSION" > "$BIN/VERSION"
"$BIN/build_binary" --help >/dev/null 2>&1 || true  # prints usage and exits non-zero by design
say "built $BIN/lmplz and $BIN/build_binary"
