#!/usr/bin/env bash
# Installs the pinned test tools (anvil, cast, solcjs) into tools/node_modules
# from tools/package-lock.json. Idempotent: when tools/node_modules was installed
# from the current lockfile (stamp file) and the binaries run, it does nothing.
# Needs node and npm; reaches only the npm registry. Prints the anvil path last.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools"
BIN="$TOOLS/node_modules/.bin"
STAMP="$TOOLS/node_modules/.budgetd-install-stamp"

command -v npm >/dev/null 2>&1 || { echo "install-tools: npm not found (install node and npm)" >&2; exit 1; }

lock_hash() { sha256sum "$TOOLS/package-lock.json" "$TOOLS/package.json" | sha256sum | cut -d' ' -f1; }
want="$(lock_hash)"

up_to_date() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] &&
        [[ -x "$BIN/anvil" && -x "$BIN/cast" && -e "$BIN/solcjs" ]]
}

if ! up_to_date; then
    echo "install-tools: npm ci --prefix tools" >&2
    rm -f "$STAMP"
    npm ci --prefix "$TOOLS" --no-audit --no-fund --loglevel=error >&2
    echo "$want" > "$STAMP"
fi

# Verify the binaries actually run (catches a wrong platform or a broken install).
for tool in anvil cast; do
    if ! out="$("$BIN/$tool" --version 2>&1)"; then
        echo "install-tools: $BIN/$tool --version failed:" >&2
        echo "$out" >&2
        rm -f "$STAMP"
        exit 1
    fi
    echo "install-tools: $tool $(head -n1 <<<"$out" | sed 's/^[a-z]* Version: //')" >&2
done

echo "$BIN/anvil"
