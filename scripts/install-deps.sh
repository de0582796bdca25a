#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: Debian packages (only those
# missing, so a second run is quick) and cargo tools. Called by test.sh, demo.sh and bench/.
#
# usage: scripts/install-deps.sh [extra Debian packages…]
set -euo pipefail

# Packages the test suite needs. Later slices add the KDC, Redis and nginx here.
# libkrb5-dev, libclang-dev and clang: the test Exchange's Negotiate acceptor links the system
# GSSAPI through the libgssapi crate, whose bindings bindgen generates at build time.
# chromium and chromium-driver: the admin console's real-browser test (tests/console.rs).
# haproxy: the load balancer in front of three gateway processes (tests/scale_out.rs).
# samba with samba-ad-provision (the AD schema), samba-dsdb-modules (the directory's ldb
# modules) and samba-vfs-modules (provisioning sets sysvol's ACLs through them): Samba's AD DC,
# the AD-like second KDC of kcd-client's tests (seg_testbed::samba, needs root).
packages=(ca-certificates pkg-config krb5-kdc krb5-admin-server krb5-user krb5-kdc-ldap slapd ldap-utils
  libkrb5-dev libclang-dev clang redis-server haproxy chromium chromium-driver
  samba samba-ad-provision samba-dsdb-modules samba-vfs-modules "$@")
# A python3 that can create virtual environments (with pip), for the EWS client tests. Any
# python3 on PATH that can (e.g. pyenv's) will do; otherwise Debian's.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  packages+=(python3 python3-venv)
fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  # Keep apt from starting system services (krb5-kdc, redis, nginx, samba): the tests start
  # their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
  fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
# cargo-deny: the dependency policy of deny.toml (licenses, bans, sources), checked by
# scripts/test.sh.
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "install-deps: installing cargo-deny"
  cargo install --locked cargo-deny
fi

# The Python EWS clients the tests drive (tests/ews_client_library.rs), pinned in
# tests/clients/requirements.txt, in a virtual environment at the workspace root. Reinstalled
# only when the venv is missing or broken or the requirements changed.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-tests"
requirements="$root/tests/clients/requirements.txt"
installed="$venv/requirements.installed"
if ! "$venv/bin/python3" -c 'import exchangelib' >/dev/null 2>&1 || ! cmp -s "$requirements" "$installed"; then
  echo "install-deps: installing the Python EWS clients into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$installed"
fi
