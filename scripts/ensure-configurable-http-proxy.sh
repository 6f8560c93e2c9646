#!/usr/bin/env bash
# JupyterHub's proxy for the hosted-notebook test: configurable-http-proxy from npm, pinned, installed into
# the repository's gitignored .node/ folder, never globally. Idempotent: when the pinned version is there it
# does nothing. Prints nothing on success, so `make test` and the test fixture can both call it.
set -euo pipefail
VERSION=5.3.0
prefix="$(cd "$(dirname "$0")/.." && pwd)/.node"
bin="$prefix/node_modules/.bin/configurable-http-proxy"
if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing nodejs and npm with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "error: configurable-http-proxy needs Node.js and npm, e.g.: sudo apt-get install nodejs npm" >&2
    exit 1
  fi
fi
echo "installing configurable-http-proxy@$VERSION into $prefix" >&2
npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error "configurable-http-proxy@$VERSION" >&2
[ "$("$bin" --version)" = "$VERSION" ]
