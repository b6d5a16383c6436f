#!/usr/bin/env bash
# Fetch the scripts the built book's pages load, from npm into _widgets/ (gitignored), so every
# page works offline and no page asks a CDN for anything (see ../shared/TOOLCHAIN.md):
#   _widgets/widgets/  the ipywidgets html-manager and require.js (widgets in static pages);
#   _widgets/mathjax/  MathJax 3's browser bundle (the `$...$` math of the notebooks).
# Sphinx copies _widgets/ into _static/ (html_static_path in _config.yml). Idempotent: each part
# is skipped when its stamp file is present, and each is built in a temporary folder first.
# The html-manager's fallback loader for third-party widget modules points at a public CDN; the
# book uses only core widgets, so that URL is replaced by a local path that is never requested.
set -euo pipefail
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.6
REQUIREJS=requirejs@2.3.7
MATHJAX=mathjax@3.2.2
command -v npm >/dev/null || { echo "npm is needed to fetch the book's page scripts: apt-get install -y npm" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Move a finished folder into place (replacing an older one) only once it is complete.
install_dir() { rm -rf "$2" && mkdir -p "$(dirname "$2")" && mv "$1" "$2"; }

dest=_widgets/widgets
stamp="$dest/.fetched-html-manager-1.0.6-requirejs-2.3.7"
if [ ! -f "$stamp" ]; then
  (cd "$tmp" && npm pack --silent "$HTML_MANAGER" "$REQUIREJS" >/dev/null)
  mkdir -p "$tmp/hm" "$tmp/rq" "$tmp/widgets"
  tar xzf "$tmp"/jupyter-widgets-html-manager-1.0.6.tgz -C "$tmp/hm"
  tar xzf "$tmp"/requirejs-2.3.7.tgz -C "$tmp/rq"
  cp "$tmp"/hm/package/dist/*.js "$tmp"/hm/package/dist/*.{eot,svg,ttf,woff,woff2} "$tmp/widgets/"
  cp "$tmp"/rq/package/require.js "$tmp/widgets/require.js"
  sed -i -e 's#https://cdn\.jsdelivr\.net/npm/#./widget-modules/#g' -e 's#https://unpkg\.com/#./widget-modules/#g' "$tmp"/widgets/*.js
  touch "$tmp/widgets/$(basename "$stamp")"
  install_dir "$tmp/widgets" "$dest"
  echo "widget scripts fetched into $dest"
fi

dest=_widgets/mathjax
stamp="$dest/.fetched-mathjax-3.2.2"
if [ ! -f "$stamp" ]; then
  (cd "$tmp" && npm pack --silent "$MATHJAX" >/dev/null)
  mkdir -p "$tmp/mj"
  tar xzf "$tmp"/mathjax-3.2.2.tgz -C "$tmp/mj"
  # es5/ is MathJax's browser bundle: tex-mml-chtml.js loads its fonts and any extension it
  # needs from beside itself, so the whole folder is served.
  touch "$tmp/mj/package/es5/$(basename "$stamp")"
  install_dir "$tmp/mj/package/es5" "$dest"
  echo "MathJax fetched into $dest"
fi
