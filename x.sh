#!/bin/sh
# Entry point on a fresh Debian/Ubuntu machine: makes sure what building xtask
# needs is there, a Rust toolchain (rustup's if present, otherwise Debian's
# rustc-web/cargo-web) and protoc (the CRI client's build script runs it), then
# runs `cargo xtask "$@"`, which installs the rest (eBPF toolchain) itself.
set -eu
cd "$(dirname "$0")"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS=
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    else
        PKGS=" rustc-web cargo-web rustfmt-web rust-web-clippy build-essential pkg-config ca-certificates git"
    fi
fi
# prost-build (k8s-cri's build script) finds protoc on PATH or in $PROTOC.
if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null 2>&1; then
    PKGS="$PKGS protobuf-compiler"
fi
if [ -n "$PKGS" ]; then
    echo "x.sh: installing Debian packages:$PKGS" >&2
    # The apt lock xtask's apt calls take (util::APT_LOCK).
    $SUDO flock /tmp/kmem-apt.lock apt-get -o DPkg::Lock::Timeout=600 update -qq
    $SUDO flock /tmp/kmem-apt.lock env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $PKGS
fi
exec cargo xtask "$@"
