#!/usr/bin/env bash
# Idempotent install of what the browser tests need on a fresh Debian machine (no stdin needed):
#   Debian's Chromium (/usr/bin/chromium), openssl, the npm packages pinned in package-lock.json,
#   and the esbuild bundle of partytracks (pages/partytracks.bundle.js, ignored by git).
set -euo pipefail
cd "$(dirname "$0")"

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@";
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@";
  else echo "install.sh: need root (or sudo) to run: $*" >&2; return 1; fi
}

if [ ! -x "$CHROMIUM" ]; then
  echo "install.sh: installing Debian chromium" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
[ -x "$CHROMIUM" ] || { echo "install.sh: $CHROMIUM still missing" >&2; exit 1; }

# https.test.mjs makes its self-signed certificate with openssl (node's crypto cannot make X.509).
if ! command -v openssl >/dev/null 2>&1; then
  echo "install.sh: installing openssl" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "install.sh: installing nodejs and npm" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi

# npm ci when node_modules is missing or older than the lockfile (npm writes node_modules/.package-lock.json).
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ] \
   || [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/partytracks ]; then
  echo "install.sh: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi

bundle=pages/partytracks.bundle.js
if [ ! -s "$bundle" ] || [ pages/partytracks-entry.js -nt "$bundle" ] || [ "$stamp" -nt "$bundle" ]; then
  echo "install.sh: bundling partytracks" >&2
  node_modules/.bin/esbuild pages/partytracks-entry.js --bundle --format=iife --target=chrome120 \
    '--define:process.env.NODE_ENV="production"' --log-level=warning --outfile="$bundle"
fi
