#!/usr/bin/env bash
# Set up (first time only) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh "[test]" >&2
. .venv/bin/activate
exec python -m pytest "$@"
