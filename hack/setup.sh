#!/usr/bin/env bash
# Installs what building and testing stasis need on a fresh Debian 12 machine
# that already has Rust (rustup/cargo). Idempotent, quiet, and fast when
# everything is already there: it only runs apt-get when a package is
# missing, and `apt-get update` only when the package lists are empty or the
# install fails without it.
set -euo pipefail

PACKAGES=(build-essential pkg-config util-linux procps psmisc jq busybox-static libseccomp-dev
    runc containerd podman conmon umoci containernetworking-plugins golang-github-containers-common
    nftables iproute2)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
        SUDO=(sudo)
    fi
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "${missing[@]}" >"$log" 2>&1
    }
    say "installing ${missing[*]}"
    if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null || ! apt_install; then
        say "apt-get update"
        "${SUDO[@]}" apt-get update -q >"$log" 2>&1 || { cat "$log" >&2; die "apt-get update failed"; }
        apt_install || { cat "$log" >&2; die "apt-get install ${missing[*]} failed"; }
    fi
fi

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first (https://rustup.rs)"

for comp in rustfmt clippy; do
    if [[ $comp == rustfmt ]]; then check=(cargo fmt --version); else check=(cargo clippy --version); fi
    if ! "${check[@]}" >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "$comp is missing and rustup is not available to add it"
        say "rustup component add $comp"
        rustup component add "$comp" >/dev/null
    fi
done
