#!/usr/bin/env bash
# The end-to-end demo on loopback: the test Exchange server and seg-proxy, a subscription
# through the gateway, a mail delivered, the notification arriving through the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --release --locked -p seg-testbed-cli --bin seg-testbed -- demo "$@"
