#!/usr/bin/env bash
# Compiles the test contracts in abi/ with the pinned solcjs (tools/package.json)
# into the committed artefacts abi/<Name>.bin and abi/<Name>.abi.json.
#
#   scripts/compile-contracts.sh           (re)write the artefacts
#   scripts/compile-contracts.sh --check   compile into a temp dir; exit 1, naming
#                                          each file, if the committed ones differ
#
# Output is deterministic: solcjs runs from abi/ with bare file names, so the
# metadata hash embedded in the bytecode does not depend on where the repo lives.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ABI="$ROOT/abi"
CONTRACTS=(TestSpendingHook MockAggregator)

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

"$ROOT/scripts/install-tools.sh" >/dev/null
SOLCJS="$ROOT/tools/node_modules/.bin/solcjs"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Compile each file on its own; solcjs names outputs <file>_sol_<Contract>.{bin,abi}.
for name in "${CONTRACTS[@]}"; do
    (cd "$ABI" && "$SOLCJS" --bin --abi --optimize -o "$tmp/raw" "$name.sol")
    mv "$tmp/raw/${name}_sol_${name}.bin" "$tmp/$name.bin"
    mv "$tmp/raw/${name}_sol_${name}.abi" "$tmp/$name.abi.json"
done

status=0
for name in "${CONTRACTS[@]}"; do
    for ext in bin abi.json; do
        file="$name.$ext"
        if [[ $check -eq 1 ]]; then
            if ! cmp -s "$tmp/$file" "$ABI/$file"; then
                echo "compile-contracts: abi/$file differs from a fresh compile (run scripts/compile-contracts.sh)" >&2
                status=1
            fi
        else
            cp "$tmp/$file" "$ABI/$file"
            echo "compile-contracts: wrote abi/$file" >&2
        fi
    done
done
if [[ $check -eq 1 && $status -eq 0 ]]; then
    echo "compile-contracts: abi/ artefacts are up to date" >&2
fi
exit $status
