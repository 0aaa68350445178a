#!/usr/bin/env bash
# Boot an image once under QEMU (TCG) with the vhost-user vsock daemon, like the controller
# does, and save the serial console. Manual test helper.
#   boot-test.sh IMAGE_DIR CONSOLE_LOG [EXTRA_CMDLINE] [TIMEOUT_S]
# Uses the kernel named in IMAGE_DIR/manifest.json; KERNEL=path overrides it.
set -euo pipefail
img="$1"; log="$2"; extra="${3:-}"; timeout_s="${4:-120}"
man="$img/manifest.json"
get() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\"]*\)\"\{0,1\},\{0,1\}$/\1/p" "$man"; }
kernel="${KERNEL:-$(get kernel)}"
cmdline="$(get cmdline) $extra"
run=$(mktemp -d /tmp/vexfs-boot.XXXXXX)
vdv="${VHOST_DEVICE_VSOCK:-$(command -v vhost-device-vsock || echo "$HOME/.cargo/bin/vhost-device-vsock")}"
setsid "$vdv" --vm "guest-cid=3,socket=$run/vhost.sock,uds-path=$run/vm.vsock" > "$run/vdv.log" 2>&1 &
vpid=$!
for _ in $(seq 50); do [ -S "$run/vhost.sock" ] && break; sleep 0.1; done
start=$(date +%s.%N)
set +e
setsid timeout -s KILL "$timeout_s" qemu-system-x86_64 -accel tcg -m 512M -smp 1 -nographic -nodefaults \
    -no-reboot -nic none -serial "file:$log" -kernel "$kernel" -initrd "$img/initramfs.cpio.gz" \
    -append "$cmdline" \
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
    -chardev socket,id=c0,path="$run/vhost.sock" -device vhost-user-vsock-pci,chardev=c0 \
    -device pvpanic-pci -action panic=exit-failure &
qpid=$!
wait $qpid; rc=$?
set -e
end=$(date +%s.%N)
kill -- -"$qpid" 2>/dev/null || true
kill -- -"$vpid" 2>/dev/null || true
wait "$vpid" 2>/dev/null || true
rm -rf "$run"
awk -v rc="$rc" -v s="$start" -v e="$end" 'BEGIN { printf "qemu exit=%s wall=%.2fs\n", rc, e - s }'
