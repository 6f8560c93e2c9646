#!/usr/bin/env bash
# Fetch the pinned deep-chat bundle from the npm registry and check its hash: served by the kit, never
# loaded from a CDN, never committed.
set -euo pipefail
version=$1 sha256=$2 target=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm pack --silent --pack-destination "$work" "deep-chat@$version" >/dev/null
tar -xzf "$work/deep-chat-$version.tgz" -C "$work" package/dist/deepChat.bundle.js package/LICENSE
echo "$sha256  $work/package/dist/deepChat.bundle.js" | sha256sum --check --quiet
mkdir -p "$(dirname "$target")"
cp "$work/package/LICENSE" "$(dirname "$target")/deep-chat.LICENSE"
cp "$work/package/dist/deepChat.bundle.js" "$target"
echo "deep-chat $version installed at $target"
