#!/usr/bin/env bash
# Copies a handful of small inputs from each (gitignored) fuzzer corpus to
# committed seed-* files: the smallest ones plus a few of medium size, so a
# fresh checkout starts from inputs that already reach every operation.
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")"
for dir in corpus/*/; do
    t=$(basename "$dir")
    n=0
    # 3 smallest and 3 around 32-64 bytes, skipping existing seeds.
    { find "$dir" -type f ! -name 'seed-*' -printf '%s %p\n' | sort -n | head -3
      find "$dir" -type f ! -name 'seed-*' -size -65c -size +31c -printf '%s %p\n' | sort -k2 | head -3; } |
    while read -r _ f; do
        n=$((n + 1))
        cp "$f" "$dir/seed-$n"
    done
    echo "$t: $(ls "$dir" | grep -c '^seed-' || true) seeds"
done
