#!/usr/bin/env bash
# The browser, proxy and thread-store tests need Debian's chromium, nginx and postgresql (the tests start
# their own throwaway PostgreSQL cluster on loopback; the Debian service itself is not used). Install them
# when missing and allowed; otherwise say exactly what to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi
echo "error: the tests need ${missing[*]}. Install them, e.g.: sudo apt-get install ${missing[*]}" >&2
exit 1
