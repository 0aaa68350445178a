#!/usr/bin/env bash
# Build the guest image for one Debian kernel: kernel (ELF vmlinux for PVH when possible,
# else bzImage), initramfs (agent as /init, busybox, transport modules, module under test)
# and manifest.json, in $VEXFS_CACHE/images/<release>/.
#
# usage: build-image.sh [OPTIONS] KERNEL
#   KERNEL              linux-image-6.12.117+deb12-amd64, 6.1.0-57-amd64, or latest-6.12 / latest-6.1,
#                       or a built kernel tree (a folder: guest-image/build-kernel.sh makes one)
#   --module PATH       put this prebuilt .ko (or .ko.xz/.ko.zst) in the image instead of
#                       building guest-image/vexfs
#   --kernel-module M   also put module M of the kernel package (dependencies resolved)
#                       in the image and load it at boot (repeatable: loop, virtio_blk)
#   --tool HOST[:GUEST] put program HOST at GUEST (default: the same path) in the image;
#                       a dynamic one gets its shared libraries, as copy_exec does (repeatable)
#   --agent PATH        static agent binary for /init (default: the workspace's agent
#                       build, built with guest-image/build-agent.sh when missing)
#   --init PATH         use PATH as /init instead of the agent (manual tests only)
#   --out DIR           output folder (default $VEXFS_CACHE/images/<release>)
#   --no-vmlinux        skip the ELF extraction, always use the bzImage
#   --force             rebuild even when the outputs are up to date
#   -q, --quiet         print only the output folder
#
# Cache: ${VEXFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vexfs}: debs/, kernels/<release>/,
# headers/<release>/, build/<release>/, images/<release>/. Downloads are skipped when cached.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=fetch-kernel.sh
. "$HERE/fetch-kernel.sh"

AGENT_PORT=5000
MODULE_DIR_IN_GUEST=/lib/modules/vexfs
# Transport modules the agent needs, dependencies resolved with modprobe --show-depends.
# vsock_loopback lets a test inside the guest connect to the agent as CID 1 (the agent
# must refuse it: only the host may drive it).
ROOT_MODULES="virtio_pci vmw_vsock_virtio_transport pvpanic_pci vsock_loopback qemu_fw_cfg"

module=""
agent=""
init=""
out=""
want_vmlinux=1
force=0
quiet=0
kernel=""
kernel_modules=""
tools=()

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --module) module="${2:?--module PATH}"; shift 2 ;;
        --module=*) module="${1#*=}"; shift ;;
        --kernel-module) kernel_modules="$kernel_modules ${2:?--kernel-module NAME}"; shift 2 ;;
        --kernel-module=*) kernel_modules="$kernel_modules ${1#*=}"; shift ;;
        --tool) tools+=("${2:?--tool HOST[:GUEST]}"); shift 2 ;;
        --tool=*) tools+=("${1#*=}"); shift ;;
        --agent) agent="${2:?--agent PATH}"; shift 2 ;;
        --agent=*) agent="${1#*=}"; shift ;;
        --init) init="${2:?--init PATH}"; shift 2 ;;
        --init=*) init="${1#*=}"; shift ;;
        --out) out="${2:?--out DIR}"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        --no-vmlinux) want_vmlinux=0; shift ;;
        --force) force=1; shift ;;
        -q|--quiet) quiet=1; shift ;;
        -h|--help) usage 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$kernel" ] || die "one KERNEL only"; kernel="$1"; shift ;;
    esac
done
[ -n "$kernel" ] || usage

say() { [ "$quiet" = 1 ] || log "$@"; }

for t in "cpio:cpio" "gzip:gzip" "xz:xz-utils" "zstd:zstd" "depmod:kmod" "modprobe:kmod" \
         "modinfo:kmod" "readelf:binutils" "dpkg-deb:dpkg" "make:make" "gcc:gcc" \
         "busybox:busybox-static"; do
    need "${t%%:*}" "${t#*:}"
done
PATH="$PATH:/usr/sbin:/sbin"

tree=""
case "$kernel" in
    */*|.*)
        # A kernel build tree: its kernel, its modules, the module under test built against it.
        # shellcheck source=kernel/tree.sh
        . "$HERE/kernel/tree.sh"
        tree_check "$kernel"
        tree="$(cd "$kernel" && pwd)"
        rel=$(cat "$tree/include/config/kernel.release") ;;
    latest-*) rel=$(latest_release "${kernel#latest-}") ;;
    *) rel=$(release_of "$kernel") ;;
esac
out="${out:-$VEXFS_CACHE/images/$rel}"

# ---- agent / init ----------------------------------------------------------------------
if [ -n "$init" ]; then
    [ -f "$init" ] || die "--init $init: no such file"
    init_src="$(cd "$(dirname "$init")" && pwd)/$(basename "$init")"
    init_kind="test-init"
else
    if [ -z "$agent" ]; then
        agent="$REPO/target/x86_64-unknown-linux-gnu/agent/vexfs-agent"
        if [ ! -x "$agent" ]; then
            say "agent binary missing: building it (guest-image/build-agent.sh)"
            agent=$("$HERE/build-agent.sh" | tail -n1)
        fi
    fi
    [ -x "$agent" ] || die "agent binary $agent not found or not executable"
    if readelf -l "$agent" 2>/dev/null | grep -q 'INTERP'; then
        die "$agent is dynamically linked: build it static (guest-image/build-agent.sh)"
    fi
    init_src="$(cd "$(dirname "$agent")" && pwd)/$(basename "$agent")"
    init_kind="agent"
fi

# ---- busybox: must be the static one -----------------------------------------------------
busybox=$(command -v busybox)
if readelf -l "$busybox" 2>/dev/null | grep -q 'INTERP'; then
    for b in /bin/busybox /usr/bin/busybox; do
        if [ -x "$b" ] && ! readelf -l "$b" | grep -q INTERP; then busybox="$b"; break; fi
    done
    readelf -l "$busybox" | grep -q INTERP &&
        die "$busybox is dynamically linked: install busybox-static"
fi

# ---- up to date? ---------------------------------------------------------------------
module_src=""
if [ -n "$module" ]; then
    [ -f "$module" ] || die "--module $module: no such file"
    module_src="$(cd "$(dirname "$module")" && pwd)/$(basename "$module")"
fi
for t in ${tools[@]+"${tools[@]}"}; do
    host="${t%%:*}"
    [ -f "$host" ] && [ -x "$host" ] || die "--tool $host: no such executable"
    case "${t#"$host"}" in ""|:/*) ;; *) die "--tool $t: the guest path must be absolute" ;; esac
done
stamp_inputs() {
    # Everything the image depends on, hashed: scripts, module sources or .ko, init, busybox.
    {
        echo "rel=$rel vmlinux=$want_vmlinux init_kind=$init_kind"
        sha256sum "$HERE/build-image.sh" "$HERE/fetch-kernel.sh" "$init_src" "$busybox"
        if [ -n "$module_src" ]; then sha256sum "$module_src"
        else (cd "$HERE/vexfs" && sha256sum Kbuild Makefile ./*.c ./*.h 2>/dev/null || true); fi
        echo "kernel_modules=$kernel_modules tools=${tools[*]+"${tools[*]}"}"
        [ -z "$tree" ] || sha256sum "$HERE/kernel/tree.sh" "$tree/.config" "$tree/arch/x86/boot/bzImage" "$tree/Module.symvers"
        for t in ${tools[@]+"${tools[@]}"}; do sha256sum "${t%%:*}"; done
    } | sha256sum | cut -d' ' -f1
}
stamp=$(stamp_inputs)
if [ "$force" = 0 ] && [ -f "$out/manifest.json" ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ]; then
    say "image for $rel is up to date: $out"
    echo "$out"
    exit 0
fi

say "building guest image for $rel ($init_kind as /init)"
mkdir -p "$out"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vexfs-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [ -n "$tree" ]; then
    kdir="$tmp/kroot"
    tree_stage "$tree" "$kdir"
    config="$tree/.config"
    vmlinuz="$tree/arch/x86/boot/bzImage"
else
fetch_kernel "$rel"
kdir="$VEXFS_CACHE/kernels/$rel"
config="$kdir/boot/config-$rel"
vmlinuz="$kdir/boot/vmlinuz-$rel"
fi
moddir="$kdir/lib/modules/$rel"
[ -f "$vmlinuz" ] || die "no $vmlinuz in the package"

# ---- kernel: ELF vmlinux with the PVH entry note, else the bzImage -----------------------
has_pvh_note() {
    # XEN_ELFNOTE_PHYS32_ENTRY = 18 (0x12) in a "Xen" note: QEMU boots the ELF through PVH.
    readelf -n "$1" 2>/dev/null | grep -Eq '^[[:space:]]*Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x00000012\)|.*PHYS32_ENTRY)'
}
extract_vmlinux() {
    # Like the kernel's scripts/extract-vmlinux: find a compressed stream, decompress, check ELF.
    local img="$1" dst="$2" spec magic rep tool pos
    for spec in 'xz -dc|\3757zXZ\000|abcde' 'zstd -dcq|(\265/\375|xxx' 'gzip -dc|\037\213\010|xy' \
                'lzma -dc|\135\000\000\000|xxx' 'bzip2 -dc|BZh|xy' 'lz4 -dc|\002!L\030|xxx'; do
        tool="${spec%%|*}"; spec="${spec#*|}"; magic="${spec%%|*}"; rep="${spec#*|}"
        command -v "${tool%% *}" >/dev/null 2>&1 || continue
        for pos in $(tr "$magic\n$rep" "\n$rep=" < "$img" | grep -abo "^$rep" | cut -d: -f1); do
            tail -c+"$pos" "$img" | $tool > "$dst" 2>/dev/null || true
            if readelf -h "$dst" >/dev/null 2>&1; then return 0; fi
        done
    done
    rm -f "$dst"
    return 1
}
kernel_format=bzimage
kernel_file="$out/vmlinuz"
cp "$vmlinuz" "$out/vmlinuz"
rm -f "$out/vmlinux"
if [ "$want_vmlinux" = 1 ]; then
    if extract_vmlinux "$vmlinuz" "$tmp/vmlinux"; then
        if has_pvh_note "$tmp/vmlinux"; then
            mv "$tmp/vmlinux" "$out/vmlinux"
            kernel_format=elf
            kernel_file="$out/vmlinux"
            say "kernel: ELF vmlinux with PVH entry note"
        else
            say "kernel: vmlinux has no PVH note (CONFIG_PVH off?): using the bzImage"
        fi
    else
        say "kernel: could not extract an ELF from the bzImage: using the bzImage"
    fi
fi

# ---- module under test -------------------------------------------------------------------
decompress_ko() { # SRC DST
    case "$1" in
        *.ko.xz) xz -dc "$1" > "$2" ;;
        *.ko.zst) zstd -dcq "$1" > "$2" ;;
        *.ko.gz) gzip -dc "$1" > "$2" ;;
        *) cp "$1" "$2" ;;
    esac
}
if [ -n "$module_src" ]; then
    decompress_ko "$module_src" "$tmp/module.ko"
    module_name=$(modinfo -F name "$tmp/module.ko" 2>/dev/null || true)
    [ -n "$module_name" ] || module_name=$(basename "$module_src" | sed 's/\.ko.*$//; s/-/_/g')
    vermagic=$(modinfo -F vermagic "$tmp/module.ko" 2>/dev/null || true)
    case "$vermagic" in
        "$rel "*) ;;
        *) log "warning: $module_src has vermagic '$vermagic', kernel is $rel: it may not load" ;;
    esac
    say "module under test: $module_src ($module_name)"
else
    module_name=vexfs
    if [ -n "$tree" ]; then kbuild="$tree"; else
    fetch_headers "$rel"
    kbuild="$VEXFS_CACHE/headers/$rel/usr/src/linux-headers-$rel"
    fi
    bdir="$VEXFS_CACHE/build/$rel/vexfs"
    rm -rf "$bdir"
    mkdir -p "$bdir"
    cp "$HERE/vexfs/Kbuild" "$HERE/vexfs/Makefile" "$HERE"/vexfs/*.c "$bdir/"
    cp "$HERE"/vexfs/*.h "$bdir/" 2>/dev/null || true
    say "building vexfs.ko against ${tree:-linux-headers-$rel}"
    # No pahole here: skip BTF for the module (it loads fine without it).
    if ! make -s -C "$kbuild" M="$bdir" CONFIG_DEBUG_INFO_BTF_MODULES= modules > "$bdir/build.log" 2>&1; then
        cat "$bdir/build.log" >&2
        die "vexfs.ko build failed (log: $bdir/build.log)"
    fi
    grep -v -E '^make|Skipping BTF' "$bdir/build.log" >&2 || true
    cp "$bdir/vexfs.ko" "$tmp/module.ko"
fi
module_in_guest="$MODULE_DIR_IN_GUEST/$module_name.ko"
cp "$tmp/module.ko" "$out/$module_name.ko"

# ---- initramfs tree ----------------------------------------------------------------------
root="$tmp/root"
mkdir -p "$root"/{bin,sbin,etc/vexfs,proc,sys,dev,tmp,mnt,root,run,var/tmp,usr/bin,usr/sbin}
mkdir -p "$root$MODULE_DIR_IN_GUEST" "$root/lib/modules/$rel"
chmod 1777 "$root/tmp" "$root/var/tmp"
chmod 0700 "$root/root"
cp "$init_src" "$root/init"
chmod 0755 "$root/init"

cp "$busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
"$busybox" --list-full | while read -r p; do
    case "$p" in
        usr/bin/*) p="bin/${p#usr/bin/}" ;;
        usr/sbin/*) p="sbin/${p#usr/sbin/}" ;;
        bin/*|sbin/*) ;;
        *) continue ;;      # linuxrc
    esac
    [ -e "$root/$p" ] || [ -L "$root/$p" ] || ln -s /bin/busybox "$root/$p"
done

cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
vexuser:x:1000:1000:vexfs test user:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
vexuser:x:1000:
nogroup:x:65534:
EOF
echo "vexfs-guest" > "$root/etc/hostname"

# Transport modules in dependency order (real deps from the package's modules.dep).
: > "$tmp/modlist"
for m in $ROOT_MODULES; do
    modprobe -d "$kdir" -S "$rel" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' >> "$tmp/modlist" ||
        true
done
[ -s "$tmp/modlist" ] || [ -n "$tree" ] || die "no transport modules found for $rel (modprobe --show-depends)"
{
    echo "# Loaded in order by /init (the agent) before it listens on vsock port $AGENT_PORT."
    awk '!seen[$0]++' "$tmp/modlist" | while read -r src; do
        relpath="${src#"$kdir"}"
        relpath="${relpath%.xz}"; relpath="${relpath%.zst}"; relpath="${relpath%.gz}"
        mkdir -p "$(dirname "$root$relpath")"
        decompress_ko "$src" "$root$relpath"
        echo "$relpath"
    done
} > "$root/etc/vexfs/modules-load"
# Modules the plan asks for, after the transport ones, with their dependencies.
if [ -n "$kernel_modules" ]; then
    : > "$tmp/extra"
    for m in $kernel_modules; do
        modprobe -d "$kdir" -S "$rel" --show-depends "$m" > "$tmp/dep" 2>&1 ||
            die "kernel module $m is not in linux-image-$rel: $(head -n1 "$tmp/dep")"
        awk '$1 == "insmod" {print $2}' "$tmp/dep" >> "$tmp/extra"
    done
    awk '!seen[$0]++' "$tmp/extra" | while read -r src; do
        relpath="${src#"$kdir"}"
        relpath="${relpath%.xz}"; relpath="${relpath%.zst}"; relpath="${relpath%.gz}"
        grep -qxF "$relpath" "$root/etc/vexfs/modules-load" && continue
        mkdir -p "$(dirname "$root$relpath")"
        decompress_ko "$src" "$root$relpath"
        echo "$relpath" >> "$root/etc/vexfs/modules-load"
    done
    say "kernel modules:$kernel_modules"
fi
for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$moddir/$f" ] && cp "$moddir/$f" "$root/lib/modules/$rel/"
done
depmod -b "$root" "$rel"
cp "$tmp/module.ko" "$root$module_in_guest"

# Guest tools; a dynamic program brings the libraries ldd names (like initramfs-tools'
# copy_exec), each at its own path, and the program interpreter.
copy_file() { # SRC DST-IN-ROOT
    mkdir -p "$(dirname "$root$2")"
    rm -f "$root$2"
    cp -L "$1" "$root$2"
}
for t in ${tools[@]+"${tools[@]}"}; do
    host="${t%%:*}"
    guest="${t#"$host"}"; guest="${guest#:}"; guest="${guest:-$host}"
    copy_file "$host" "$guest"
    chmod 0755 "$root$guest"
    if readelf -l "$host" 2>/dev/null | grep -q INTERP; then
        ldd "$host" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | while read -r lib; do
            [ -e "$root$lib" ] || copy_file "$lib" "$lib"
        done
    fi
    say "tool: $host -> $guest"
done

# Device nodes for the console before devtmpfs is mounted (needs root; else devtmpfs only).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || say "no mknod (not root): relying on devtmpfs"
mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true

# Reproducible archive: fixed mtimes, sorted names, root ownership, no gzip timestamp.
epoch="${SOURCE_DATE_EPOCH:-0}"
find "$root" -exec touch -h -d "@$epoch" {} +
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
    gzip -9 -n > "$out/initramfs.cpio.gz"

# ---- manifest ----------------------------------------------------------------------------
kfence=false
grep -q '^CONFIG_KFENCE=y' "$config" 2>/dev/null && kfence=true
package="linux-image-$rel"
[ -z "$tree" ] || package="tree:$tree"
# The kernel's config beside the manifest: plan tests that require an option check it.
cp "$config" "$out/kernel.config"
cmdline="console=ttyS0 rdinit=/init panic=-1 sysrq_always_enabled sysctl.kernel.hung_task_timeout_secs=5 sysctl.kernel.watchdog_thresh=5 sysctl.kernel.panic_on_warn=0"
[ "$kfence" = true ] && cmdline="$cmdline kfence.sample_interval=1"
cmdline="$cmdline vexfs.agent.port=$AGENT_PORT loglevel=7"

json_str() { local s="$1"; s="${s//\\/\\\\}"; s="${s//\"/\\\"}"; printf '"%s"' "$s"; }
{
    printf '{\n'
    printf '  "kernel_release": %s,\n' "$(json_str "$rel")"
    printf '  "package": %s,\n' "$(json_str "$package")"
    printf '  "kernel": %s,\n' "$(json_str "$kernel_file")"
    printf '  "kernel_format": %s,\n' "$(json_str "$kernel_format")"
    printf '  "bzimage": %s,\n' "$(json_str "$out/vmlinuz")"
    printf '  "initramfs": %s,\n' "$(json_str "$out/initramfs.cpio.gz")"
    printf '  "module_path_in_guest": %s,\n' "$(json_str "$module_in_guest")"
    printf '  "module_name": %s,\n' "$(json_str "$module_name")"
    printf '  "module_host_path": %s,\n' "$(json_str "$out/$module_name.ko")"
    printf '  "kfence": %s,\n' "$kfence"
    printf '  "kernel_config": %s,\n' "$(json_str "$out/kernel.config")"
    printf '  "cmdline": %s,\n' "$(json_str "$cmdline")"
    printf '  "agent_port": %s,\n' "$AGENT_PORT"
    printf '  "guest_cid": 3,\n'
    printf '  "init": %s\n' "$(json_str "$init_kind")"
    printf '}\n'
} > "$out/manifest.json.tmp"
mv "$out/manifest.json.tmp" "$out/manifest.json"
echo "$stamp" > "$out/.stamp"

say "image ready: $out ($kernel_format kernel, $(du -h "$out/initramfs.cpio.gz" | cut -f1) initramfs)"
echo "$out"
