# Sourced by build-image.sh when KERNEL is a kernel build tree (a folder): checks the tree
# and stages its modules. Functions only; uses log/die from fetch-kernel.sh.

# Options the guest cannot boot or reach the host without: y, or m (then loaded from
# the tree's modules like a Debian kernel's).
TREE_NEEDS_YM="CONFIG_VIRTIO_PCI CONFIG_VSOCKETS CONFIG_VIRTIO_VSOCKETS CONFIG_VSOCKETS_LOOPBACK CONFIG_PVPANIC_PCI"
# Built in, or the initramfs and console do not work.
TREE_NEEDS_Y="CONFIG_MODULES CONFIG_BLK_DEV_INITRD CONFIG_RD_GZIP CONFIG_DEVTMPFS CONFIG_PROC_FS CONFIG_SYSFS CONFIG_TMPFS CONFIG_SERIAL_8250_CONSOLE CONFIG_VIRTIO"

# tree_check TREE: a clear error for a tree that is not built or lacks what the guest needs.
tree_check() {
    local t="$1" f missing="" o v
    [ -d "$t" ] || die "kernel tree $t: no such folder"
    [ -f "$t/Makefile" ] || die "kernel tree $t: no Makefile (not a kernel source tree)"
    [ -f "$t/.config" ] || die "kernel tree $t is not configured: no .config (make defconfig, or guest-image/build-kernel.sh)"
    for f in include/config/kernel.release arch/x86/boot/bzImage Module.symvers; do
        [ -f "$t/$f" ] || die "kernel tree $t is not built: no $f (run make bzImage modules there)"
    done
    for o in $TREE_NEEDS_YM; do
        v=$(grep -E "^$o=" "$t/.config" | cut -d= -f2 || true)
        case "$v" in y|m) ;; *) missing="$missing $o" ;; esac
    done
    for o in $TREE_NEEDS_Y; do
        grep -qx "$o=y" "$t/.config" || missing="$missing $o=y"
    done
    [ -z "$missing" ] ||
        die "kernel tree $t lacks what the guest needs:$missing (guest-image/kernel/guest.config sets them all)"
}

# tree_stage TREE DIR: the tree's modules installed under DIR (lib/modules/RELEASE, with
# modules.builtin, depmod run), as fetch_kernel lays out a Debian kernel.
tree_stage() {
    local t="$1" d="$2" rel
    rel=$(cat "$t/include/config/kernel.release")
    mkdir -p "$d/lib/modules/$rel"
    if grep -q '=m$' "$t/.config"; then
        make -s -C "$t" INSTALL_MOD_PATH="$d" INSTALL_MOD_STRIP=1 DEPMOD=/bin/true modules_install >&2 ||
            die "make modules_install failed in $t"
    fi
    for f in modules.builtin modules.builtin.modinfo modules.order; do
        [ -f "$t/$f" ] && cp "$t/$f" "$d/lib/modules/$rel/"
    done
    depmod -b "$d" "$rel"
}
