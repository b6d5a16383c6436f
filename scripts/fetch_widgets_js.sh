#!/usr/bin/env bash
# Fetch the ipywidgets page scripts from npm into _widgets/widgets/, so widgets in the built
# HTML book render with no CDN (see ../shared/TOOLCHAIN.md). Idempotent: skips when present.
# The html-manager's fallback loader for third-party widget modules points at a public CDN; the
# book uses only core widgets, so that URL is replaced by a local path that is never requested.
set -euo pipefail
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.6
REQUIREJS=requirejs@2.3.7
dest=_widgets/widgets
stamp="$dest/.fetched-html-manager-1.0.6-requirejs-2.3.7"
[ -f "$stamp" ] && exit 0
command -v npm >/dev/null || { echo "npm is needed to fetch the widget scripts: apt-get install -y npm" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$HTML_MANAGER" "$REQUIREJS" >/dev/null)
mkdir -p "$tmp/hm" "$tmp/rq"
tar xzf "$tmp"/jupyter-widgets-html-manager-1.0.6.tgz -C "$tmp/hm"
tar xzf "$tmp"/requirejs-2.3.7.tgz -C "$tmp/rq"
staging="$tmp/out"
mkdir -p "$staging"
cp "$tmp"/hm/package/dist/*.js "$tmp"/hm/package/dist/*.{eot,svg,ttf,woff,woff2} "$staging/"
cp "$tmp"/rq/package/require.js "$staging/require.js"
sed -i -e 's#https://cdn\.jsdelivr\.net/npm/#./widget-modules/#g' -e 's#https://unpkg\.com/#./widget-modules/#g' "$staging"/*.js
touch "$staging/$(basename "$stamp")"
rm -rf "$dest" && mkdir -p "$(dirname "$dest")" && mv "$staging" "$dest"
echo "widget scripts fetched into $dest"
