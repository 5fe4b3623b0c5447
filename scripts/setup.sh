#!/usr/bin/env bash
# Creates .venv with msgtrace and its dependencies (idempotent). Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  # Debian's python3 needs python3-venv for `python3 -m venv`
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing python3-venv (Debian package) ..." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/pip ]; then
  rm -rf .venv  # a half-made venv from an earlier failed run
  "$PY" -m venv .venv
fi
extras=${MSGTRACE_EXTRAS:-}
stamp=".venv/.msgtrace-installed${extras:+-$extras}"
# the collector's C decoder (collectors/_fastjson.c) needs a C compiler and the Python headers
has_headers() { "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; }
if ! command -v "${CC:-cc}" >/dev/null 2>&1 || ! has_headers; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing the C toolchain for the collector's decoder (gcc, python3-dev) ..." >&2
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc python3-dev >/dev/null; }; then
    echo "note: could not install gcc/python3-dev: collectors._fastjson is not built and the collector decodes in Python (~4x slower)" >&2
  fi
fi
# (re)install when the project, or the C decoder's source, changed since the last install
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ collectors/_fastjson.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
