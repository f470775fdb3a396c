#!/bin/sh
# Entry point on a fresh Debian/Ubuntu machine: makes sure a Rust toolchain is
# there (rustup's if present, otherwise Debian's rustc-web/cargo-web), then runs
# `cargo xtask "$@"`, which installs the rest (eBPF toolchain) itself.
set -eu
cd "$(dirname "$0")"
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "x.sh: no cargo found; installing Debian's Rust toolchain (rustc-web, cargo-web)" >&2
        $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
            rustc-web cargo-web rustfmt-web rust-web-clippy build-essential pkg-config ca-certificates git
    fi
fi
exec cargo xtask "$@"
