#!/usr/bin/env bash
# Fuzz and Miri stage for CI: runs every cargo-fuzz target for
# FUZZ_SECONDS (default 60) and fails on any crash, then runs the Miri
# subset that is practical on a small runner. Prints the time each stage
# took. Usage: fuzz/run-ci.sh   (from anywhere)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
seconds="${FUZZ_SECONDS:-60}"
targets=(walker_ops aspace_ops guest_walk entry_decode)

stage_start=0
begin() {
    stage_start=$(date +%s)
    echo "==> $1"
}
end() {
    echo "<== $1: $(($(date +%s) - stage_start)) s"
}

begin "toolchain"
if ! cargo +nightly --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
installed="$(rustup +nightly component list --installed)"
for c in miri rust-src; do
    if ! grep -q "^$c" <<<"$installed"; then
        rustup +nightly component add "$c"
    fi
done
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
end "toolchain"

cd "$here"
begin "build fuzz targets"
cargo +nightly fuzz build
end "build fuzz targets"

for t in "${targets[@]}"; do
    begin "fuzz $t (${seconds} s)"
    mkdir -p "corpus/$t"
    # A crash makes libFuzzer exit non-zero; set -e then fails the job
    # and the input is left in fuzz/artifacts/$t/.
    # With -jobs libFuzzer writes its log to fuzz-0.log; print it either way.
    rm -f fuzz-*.log
    status=0
    cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -jobs=1 -workers=1 -rss_limit_mb=3072 -print_final_stats=1 || status=$?
    cat fuzz-*.log 2>/dev/null | grep -E "^#[0-9]+ +DONE|stat::|panicked|SUMMARY" || true
    if [ "$status" -ne 0 ]; then
        cat fuzz-*.log 2>/dev/null | tail -60 >&2 || true
        echo "fuzz target $t failed (exit $status)" >&2
        exit 1
    fi
    if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/oom-*" >/dev/null \
        || compgen -G "artifacts/$t/timeout-*" >/dev/null; then
        echo "fuzz target $t left artifacts:" >&2
        ls -l "artifacts/$t" >&2
        exit 1
    fi
    end "fuzz $t (${seconds} s)"
done

cd "$root"
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-permissive-provenance}"
export PROPTEST_CASES="${PROPTEST_CASES:-2}"
begin "miri npt-table --lib"
cargo +nightly miri test -p npt-table --lib
end "miri npt-table --lib"
begin "miri guest-aspace --lib"
cargo +nightly miri test -p guest-aspace --lib
end "miri guest-aspace --lib"
# The concurrent paths on std threads, at Miri's reduced sizes: inserts
# and flag updates racing on every format, vCPUs faulting one page.
begin "miri npt-table --test concurrent"
cargo +nightly miri test -p npt-table --test concurrent
end "miri npt-table --test concurrent"
begin "miri guest-aspace --test shared_space"
cargo +nightly miri test -p guest-aspace --test shared_space vcpus_faulting
end "miri guest-aspace --test shared_space"
if [ "${MIRI_FULL:-0}" = 1 ]; then
    begin "miri npt-table --test fault_injection"
    cargo +nightly miri test -p npt-table --test fault_injection
    end "miri npt-table --test fault_injection"
    begin "miri guest-aspace --test stress"
    cargo +nightly miri test -p guest-aspace --test stress
    end "miri guest-aspace --test stress"
fi
