#!/usr/bin/env bash
# Builds the bare-metal example hypervisors and runs them under QEMU, once
# per table variant:
#   aarch64: Stage2<40> (3 levels, concatenated root) and Stage2<48> (4 levels)
#   riscv64: Sv39x4 and Sv48x4
#   x86-npt: AMD SVM with Npt4 (QEMU TCG)
#   x86-ept: Intel VMX with Ept4 (Bochs, Haswell model)
#   x86-npt-bochs: AMD SVM with Npt4 (Bochs, Ryzen model)
#   x86: the three x86 runs
# A run passes when the emulator exits with its success status within 60 s
# (240 s for Bochs) and the output has PASS, no FAIL, and the guest's line
# sent through the pass-through UART (x86: port 0xE9). Success status: 0;
# 33 for x86 under QEMU (isa-debug-exit); 1 for Bochs, whose shutdown port
# always ends it as a "fatal" panic.
#
# Usage: examples/qemu/run.sh [--allow-skip] aarch64|riscv64|x86-npt|x86-ept|x86-npt-bochs|x86|all
# A missing tool (cargo, rustup target, QEMU) prints "SKIPPED qemu: <reason>"
# and exits 0 only with --allow-skip; otherwise it exits non-zero.
set -u

here=$(cd "$(dirname "$0")" && pwd)
allow_skip=0
which=""
for arg in "$@"; do
    case "$arg" in
        --allow-skip) allow_skip=1 ;;
        aarch64 | riscv64 | x86-npt | x86-ept | x86-npt-bochs | x86 | all) which="$arg" ;;
        *) which="bad" ;;
    esac
done
if [ -z "$which" ] || [ "$which" = bad ]; then
    echo "usage: $0 [--allow-skip] aarch64|riscv64|x86-npt|x86-ept|x86-npt-bochs|x86|all" >&2
    exit 2
fi

skipped=0
# Reports a missing tool; the caller stops that architecture.
skip() {
    echo "SKIPPED qemu: $1"
    skipped=1
    return 1
}

export CARGO_TARGET_DIR="$here/target"
if ! command -v cargo > /dev/null; then
    skip "cargo not found"
    [ "$allow_skip" = 1 ] && exit 0
    exit 1
fi

# Adds a rust target if it is missing.
need_target() {
    local target="$1"
    if command -v rustup > /dev/null; then
        rustup target list --installed | grep -qx "$target" && return 0
        rustup target add "$target" > /dev/null 2>&1 || skip "cannot add rust target $target"
    else
        # Without rustup, trust the toolchain and let the build tell.
        return 0
    fi
}

failed=0

# run_variant NAME QEMU-COMMAND...: runs one boot and judges its output.
run_variant() {
    run_variant_rc "$1" 0 "${@:2}"
}

# run_variant_rc NAME STATUS COMMAND...: the same, for an emulator whose
# success exit status is STATUS.
run_variant_rc() {
    local name="$1" want="$2"
    shift 2
    echo "=== $name"
    local out rc log
    log=$(mktemp)
    timeout "${run_timeout:-60}" "$@" < /dev/null > "$log" 2>&1
    rc=$?
    out=$(tr -d '\r' < "$log")
    rm -f "$log"
    echo "$out"
    if [ "$rc" -ne "$want" ]; then
        echo "=== $name: FAILED (exit status $rc, want $want)"
        failed=1
    elif ! grep -qx PASS <<< "$out" || grep -q FAIL <<< "$out"; then
        echo "=== $name: FAILED (no PASS line, or a FAIL)"
        failed=1
    elif ! grep -q "guest: hello through the pass-through UART" <<< "$out"; then
        echo "=== $name: FAILED (the guest's UART line is missing)"
        failed=1
    else
        echo "=== $name: passed"
    fi
}

run_aarch64() {
    command -v qemu-system-aarch64 > /dev/null || { skip "qemu-system-aarch64 not found"; return; }
    need_target aarch64-unknown-none || return
    (cd "$here/aarch64" && cargo build --release) || { echo "=== aarch64: build FAILED"; failed=1; return; }
    local elf="$CARGO_TARGET_DIR/aarch64-unknown-none/release/npt-qemu-aarch64"
    for bits in 40 48; do
        run_variant "aarch64 Stage2<$bits>" qemu-system-aarch64 -M virt,virtualization=on -cpu max -m 3G \
            -nographic -semihosting -net none -no-reboot \
            -device loader,addr=0x43fff000,data=$bits,data-len=4 -kernel "$elf"
    done
}

run_riscv64() {
    command -v qemu-system-riscv64 > /dev/null || { skip "qemu-system-riscv64 not found"; return; }
    need_target riscv64gc-unknown-none-elf || return
    (cd "$here/riscv64" && cargo build --release) || { echo "=== riscv64: build FAILED"; failed=1; return; }
    local elf="$CARGO_TARGET_DIR/riscv64gc-unknown-none-elf/release/npt-qemu-riscv64"
    for bits in 39 48; do
        run_variant "riscv64 Sv${bits}x4" qemu-system-riscv64 -M virt -cpu rv64,h=true -bios none -m 3G \
            -nographic -net none -no-reboot \
            -device loader,addr=0x83fff000,data=$bits,data-len=4 -kernel "$elf"
    done
}

# The x86 hypervisor: one image for SVM (QEMU) and VMX (Bochs).
build_x86() {
    need_target x86_64-unknown-none || return 1
    (cd "$here/x86_64" && cargo build --release) || { echo "=== x86: build FAILED"; failed=1; return 1; }
    x86_elf="$CARGO_TARGET_DIR/x86_64-unknown-none/release/npt-qemu-x86_64"
}

run_x86_npt() {
    command -v qemu-system-x86_64 > /dev/null || { skip "qemu-system-x86_64 not found"; return; }
    build_x86 || return
    # isa-debug-exit: the hypervisor writes 0x10 on PASS, so QEMU exits 33.
    run_variant_rc "x86 SVM Npt4 (QEMU)" 33 qemu-system-x86_64 -accel tcg \
        -cpu qemu64,+svm,+npt,+pdpe1gb -m 3G -display none -net none -no-reboot \
        -debugcon stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel "$x86_elf"
}

# run_bochs NAME CPU-MODEL: boots the x86 image from a floppy under Bochs.
# The floppy is the image's boot sector (512 bytes at file offset 0x1000)
# followed by the whole image file, which the boot sector reads to 0x10000
# (at most 1152 sectors, below 0xA0000) and copies to 1 MiB.
run_bochs() {
    local name="$1" model="$2"
    command -v bochs > /dev/null || { skip "bochs not found"; return; }
    local bios=/usr/share/bochs/BIOS-bochs-latest vga=/usr/share/vgabios/vgabios.bin
    [ -r "$bios" ] && [ -r "$vga" ] || { skip "Bochs BIOS images not found (bochsbios, vgabios)"; return; }
    build_x86 || return
    local size
    size=$(stat -c %s "$x86_elf")
    if [ "$size" -gt $((1152 * 512)) ]; then
        echo "=== $name: FAILED (image of $size bytes is too big for the boot sector)"
        failed=1
        return
    fi
    local dir
    dir=$(mktemp -d)
    dd if="$x86_elf" of="$dir/floppy.img" bs=512 skip=8 count=1 status=none
    dd if="$x86_elf" of="$dir/floppy.img" bs=512 seek=1 conv=notrunc status=none
    truncate -s 1474560 "$dir/floppy.img"
    cat > "$dir/bochsrc" << EOF
memory: guest=3072, host=2048
romimage: file=$bios
vgaromimage: file=$vga
cpu: model=$model, count=1, ips=100000000, reset_on_triple_fault=0
floppya: 1_44=$dir/floppy.img, status=inserted
boot: floppy
display_library: term
port_e9_hack: enabled=1
log: $dir/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
EOF
    # The debugger stops before the first instruction unless told to go on.
    echo c > "$dir/cmds"
    run_timeout=240 run_variant_rc "$name" 1 bochs -q -f "$dir/bochsrc" -rc "$dir/cmds"
    rm -rf "$dir"
}

run_x86_ept() {
    run_bochs "x86 VMX Ept4 (Bochs)" corei7_haswell_4770
}

run_x86_npt_bochs() {
    run_bochs "x86 SVM Npt4 (Bochs)" ryzen
}

case "$which" in
    aarch64) run_aarch64 ;;
    riscv64) run_riscv64 ;;
    x86-npt) run_x86_npt ;;
    x86-ept) run_x86_ept ;;
    x86-npt-bochs) run_x86_npt_bochs ;;
    x86)
        run_x86_npt
        run_x86_ept
        run_x86_npt_bochs
        ;;
    all)
        run_aarch64
        run_riscv64
        run_x86_npt
        run_x86_ept
        run_x86_npt_bochs
        ;;
esac

if [ "$skipped" -ne 0 ] && [ "$allow_skip" != 1 ]; then
    echo "qemu examples: FAILED (skipped without --allow-skip)"
    exit 1
fi
if [ "$failed" -ne 0 ]; then
    echo "qemu examples: FAILED"
    exit 1
fi
if [ "$skipped" -ne 0 ]; then
    echo "qemu examples: passed where the tools were present"
else
    echo "qemu examples: all passed"
fi
