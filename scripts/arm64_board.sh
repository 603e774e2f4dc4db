#!/usr/bin/env bash
# An emulated arm64 board: a Debian arm64 root run under qemu-user, so an arm64 artifact can be loaded and
# trained with the runtime alone on an x86 workstation. Correctness only: timings under emulation mean nothing.
#
#   arm64_board.sh root             build (once) and print the cached Debian root
#   arm64_board.sh install BUNDLE   install a runtime bundle (fedskel-deploy --bundle) on the board:
#                                   its requirements (aarch64 wheels, TVM without its compiler library)
#                                   and its fedskel/ package
#   arm64_board.sh python ARGS...   run the board's python3 (qemu-aarch64-static -L ROOT), bundle on its path
#
# The root lives outside the repository: $FEDSKEL_ARM64_ROOT (default ~/.cache/fedskel/arm64-root).
# Building it needs root (apt-get, debootstrap) and network to a Debian mirror and PyPI; running it needs neither.
# Artifacts for it are linked on the host by the pip-installed zig (or a named cross gcc): see targets/linker.py.
set -euo pipefail

ROOT="${FEDSKEL_ARM64_ROOT:-$HOME/.cache/fedskel/arm64-root}"
SUITE="${FEDSKEL_DEBIAN_SUITE:-bookworm}"
PYTHON="${PYTHON:-python3}"  # a host python with pip, for downloading the aarch64 wheels
BOARD_DIR=/opt/fedskel       # on the board: site-packages/ (wheels) and app/ (the bundle)
DEBIAN_READY="$ROOT/.fedskel-debian-ready"
WHEELS_READY="$ROOT$BOARD_DIR/.requirements-installed"

die() { echo "arm64_board: $*" >&2; exit 1; }

ensure_host_tools() {
    local missing=()
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed (run apt-get update first?)"
    else
        die "missing host tools: run (as root) apt-get install ${missing[*]}"
    fi
}

debian_mirror() {
    # the host's own Debian mirror (one-line "deb URL ..." or deb822 "URIs: URL"), else the public one
    local url
    url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {print $2} /^deb / {print $2}' | grep -m1 -E '/debian/?$' || true)
    echo "${FEDSKEL_DEBIAN_MIRROR:-${url:-http://deb.debian.org/debian}}"
}

build_root() {
    [ -e "$DEBIAN_READY" ] && return
    [ "$(id -u)" = 0 ] || die "building the Debian root needs root (debootstrap); set FEDSKEL_ARM64_ROOT to a built one"
    if [ -e "$ROOT" ]; then
        # an interrupted build: remove it, but only if it is ours
        [ -e "$ROOT/.fedskel-board" ] || die "$ROOT exists and is not a FedSkel board root; remove it or set FEDSKEL_ARM64_ROOT"
        rm -rf --one-file-system "$ROOT"
    fi
    ensure_host_tools
    mkdir -p "$ROOT" && touch "$ROOT/.fedskel-board"
    local mirror deb start=$SECONDS
    mirror=$(debian_mirror)
    echo "arm64_board: debootstrap $SUITE arm64 from $mirror into $ROOT" >&2
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 "$SUITE" "$ROOT" "$mirror" >&2 \
        || die "debootstrap failed: no network to $mirror? (FEDSKEL_DEBIAN_MIRROR overrides the mirror)"
    # The first stage unpacked the essential packages and downloaded the rest. qemu-user runs the board's
    # binaries with -L ROOT, so their files are all it needs: unpack the rest the same way (merged /usr kept)
    # instead of the second stage, which configures every package under emulation (~10 min) and needs
    # qemu registered with binfmt_misc, which an unprivileged container cannot do.
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -C "$ROOT" --keep-directory-symlink -xf - || die "cannot unpack $deb"
    done
    rm -rf "$ROOT/var/cache/apt/archives/"*.deb
    echo "debootstrap $SUITE arm64 (unpacked, not configured) from $mirror in $((SECONDS - start)) s" > "$DEBIAN_READY"
}

board_python() {
    local exe
    exe=$(readlink -f "$ROOT/usr/bin/python3") || die "no python3 in $ROOT"
    echo "$ROOT/usr/bin/$(basename "$exe")"
}

install_bundle() {
    local bundle=$1 requirements=$1/requirements.txt
    [ -f "$requirements" ] && [ -d "$bundle/fedskel/runtime" ] || die "$bundle is not a runtime bundle (make one with fedskel-deploy --bundle DIR)"
    build_root
    local version stamp
    version=$(basename "$(board_python)" | sed 's/^python//')
    stamp="$version $(sha256sum < "$requirements")"
    if [ "$(cat "$WHEELS_READY" 2>/dev/null)" != "$stamp" ]; then
        # pip resolves and unpacks aarch64 wheels on the host (manylinux2014 alone finds no TVM wheel)
        rm -rf "$ROOT$BOARD_DIR/site-packages"
        "$PYTHON" -m pip install -q --target "$ROOT$BOARD_DIR/site-packages" --only-binary=:all: \
            --implementation cp --python-version "$version" --platform manylinux_2_28_aarch64 \
            --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --no-warn-conflicts \
            -r "$requirements" >&2 || die "pip could not fetch the aarch64 wheels in $requirements (network to PyPI?)"
        # keep the TVM runtime only (python runs with TVM_USE_RUNTIME_LIB=1): proves the board needs no compiler
        rm -f "$ROOT$BOARD_DIR/site-packages/tvm/lib/libtvm_compiler.so"
        echo "$stamp" > "$WHEELS_READY"
    fi
    rm -rf "$ROOT$BOARD_DIR/app"
    mkdir -p "$ROOT$BOARD_DIR/app"
    cp -r "$bundle/." "$ROOT$BOARD_DIR/app/"
}

run_python() {
    [ -e "$WHEELS_READY" ] || die "nothing installed on the board yet: run $0 install BUNDLE"
    command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static not found: apt-get install qemu-user-static"
    PYTHONPATH="$ROOT$BOARD_DIR/app:$ROOT$BOARD_DIR/site-packages" PYTHONDONTWRITEBYTECODE=1 TVM_USE_RUNTIME_LIB=1 \
        exec qemu-aarch64-static -L "$ROOT" "$(board_python)" "$@"
}

case "${1:-}" in
    root) build_root; echo "$ROOT" ;;
    install) [ $# -eq 2 ] || die "usage: $0 install BUNDLE_DIR"; install_bundle "$2" ;;
    python) shift; run_python "$@" ;;
    *) die "usage: $0 root | install BUNDLE_DIR | python ARGS..." ;;
esac
