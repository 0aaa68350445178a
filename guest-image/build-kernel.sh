#!/usr/bin/env bash
# Build a guest kernel tree from Debian's linux-source package and the config fragments in
# guest-image/kernel/, cached in $VEXFS_CACHE/kernels-built/<name>-<hash>/.
#
# usage: build-kernel.sh [OPTIONS] NAME
#   NAME              debug-6.12, debug-6.1 (guest.config + debug.config: KASAN, KFENCE,
#                     lockdep, kmemleak, lockup detectors, fault injection) or
#                     guest-6.12, guest-6.1 (guest.config only)
#   --config FILE     merge this fragment last (repeatable; part of the cache key)
#   --dir             print the tree's folder and whether it is built; build nothing
#   --configure-only  unpack and configure (fragments checked), do not compile
#   -q, --quiet       no progress lines, print only the tree's folder
#
# The last line printed is the built tree (include/config/kernel.release, .config,
# arch/x86/boot/bzImage, vmlinux, Module.symvers): give it to build-image.sh as KERNEL.
# The key hashes the source package version and every fragment, so editing a fragment
# builds a new tree; an interrupted build resumes where it stopped. The build runs under
# nice -n 19 (it only takes idle CPU) with make -j${VEXFS_KERNEL_JOBS:-2}.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=fetch-kernel.sh
. "$HERE/fetch-kernel.sh"

FRAG_DIR="$HERE/kernel"
# Bump when the recipe below changes in a way that changes the built tree.
RECIPE=1

name=""
extra=()
only_dir=0
configure_only=0
quiet=0
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --config) extra+=("${2:?--config FILE}"); shift 2 ;;
        --config=*) extra+=("${1#*=}"); shift ;;
        --dir) only_dir=1; shift ;;
        --configure-only) configure_only=1; shift ;;
        -q|--quiet) quiet=1; shift ;;
        -h|--help) usage 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$name" ] || die "one NAME only"; name="$1"; shift ;;
    esac
done
[ -n "$name" ] || usage
say() { [ "$quiet" = 1 ] || log "$@"; }

kind="${name%%-*}"
series="${name#*-}"
case "$kind" in
    debug) frags=("$FRAG_DIR/guest.config" "$FRAG_DIR/debug.config") ;;
    guest) frags=("$FRAG_DIR/guest.config") ;;
    *) die "unknown kernel '$name': use debug-6.12, debug-6.1, guest-6.12 or guest-6.1" ;;
esac
case "$series" in
    6.1|6.12) ;;
    *) die "unknown kernel series in '$name': 6.12 or 6.1 (Debian's linux-source-6.12 / -6.1)" ;;
esac
for f in ${extra[@]+"${extra[@]}"}; do
    [ -f "$f" ] || die "--config $f: no such file"
    frags+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
done
for f in "${frags[@]}"; do [ -f "$f" ] || die "config fragment $f is missing"; done

deb=$(deb_path "linux-source-$series")
# linux-source-6.12_6.12.117-1~deb12u1_all.deb -> 6.12.117-1~deb12u1
srcver=$(basename "$deb" | cut -d_ -f2)
key=$( { echo "recipe=$RECIPE source=$srcver"; cat "${frags[@]}"; } | sha256sum | cut -c1-12)
dir="$VEXFS_CACHE/kernels-built/$name-$key"

if [ "$only_dir" = 1 ]; then
    if [ -f "$dir/.vexfs-ready" ]; then echo "built $dir"; else echo "missing $dir"; fi
    exit 0
fi
if [ -f "$dir/.vexfs-ready" ]; then
    say "kernel $name is built: $dir ($(cat "$dir/include/config/kernel.release"))"
    echo "$dir"
    exit 0
fi

for t in "make:make" "gcc:gcc" "flex:flex" "bison:bison" "bc:bc" "xz:xz-utils" \
         "dpkg-deb:dpkg" "perl:perl"; do
    need "${t%%:*}" "${t#*:}"
done
[ -f /usr/include/libelf.h ] || [ -f /usr/include/gelf.h ] ||
    die "libelf headers are missing (objtool needs them): apt-get install -y libelf-dev"
[ -f /usr/include/openssl/ssl.h ] ||
    die "openssl headers are missing: apt-get install -y libssl-dev"

start=$(date +%s)
# ---- source ---------------------------------------------------------------------------
if [ ! -f "$dir/.vexfs-unpacked" ]; then
    say "unpacking linux-source-$series ($srcver) into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/linux-source-$series.tar.xz" |
        tar -xJ -C "$dir" --strip-components=1 ||
        die "could not unpack the kernel source from $deb"
    [ -f "$dir/Makefile" ] || die "$deb has no kernel Makefile in linux-source-$series.tar.xz"
    touch "$dir/.vexfs-unpacked"
fi

# ---- config ---------------------------------------------------------------------------
# The release names the kind, so a report says which kernel it came from.
printf 'CONFIG_LOCALVERSION="-vexfs-%s"\n# CONFIG_LOCALVERSION_AUTO is not set\n' "$kind" > "$dir/.vexfs-name.config"
frags+=("$dir/.vexfs-name.config")
if [ ! -f "$dir/.vexfs-configured" ]; then
    say "configuring: defconfig + kvm_guest.config + ${frags[*]##*/}"
    (
        cd "$dir"
        make -s defconfig
        make -s kvm_guest.config
        scripts/kconfig/merge_config.sh -m -O . .config "${frags[@]}" > .vexfs-merge.log
        make -s olddefconfig
    ) > "$dir/.vexfs-config.log" 2>&1 || { cat "$dir/.vexfs-config.log" >&2; die "configuring the kernel failed"; }
    # Every option a fragment sets must have survived olddefconfig (a later fragment wins).
    missing=$(awk '
        FNR == NR { have[$0] = 1; next }
        /^CONFIG_[A-Za-z0-9_]+=/ { k = $0; sub(/=.*/, "", k); want[k] = $0; next }
        /^# CONFIG_[A-Za-z0-9_]+ is not set/ { want[$2] = $2 " is not set"; next }
        END {
            for (k in want) {
                w = want[k]
                if (w ~ / is not set$/) { if ((k "=y") in have || (k "=m") in have) print w }
                else if (!(w in have)) print w
            }
        }' "$dir/.config" "${frags[@]}" | sort)
    if [ -n "$missing" ]; then
        {
            echo "these fragment options did not survive make olddefconfig (a dependency is off, or the option does not exist in $srcver):"
            while read -r m; do
                k="${m%%=*}"; k="${k%% is not set}"
                printf '  wanted %-40s got %s\n' "$m" "$(grep -E "^$k=|^# $k is not set" "$dir/.config" || echo "(absent)")"
            done <<< "$missing"
        } >&2
        die "kernel config for $name is not what the fragments ask for (fix guest-image/kernel/*.config)"
    fi
    touch "$dir/.vexfs-configured"
fi

# make kernelrelease reads include/config/auto.conf, which only the build writes.
planned_release() {
    printf '%s%s\n' "$(make -s -C "$dir" kernelversion)" \
        "$(sed -n 's/^CONFIG_LOCALVERSION="\(.*\)"$/\1/p' "$dir/.config")"
}
if [ "$configure_only" = 1 ]; then
    say "configured $name ($(planned_release)): every fragment option survived"
    echo "$dir"
    exit 0
fi

# ---- build ----------------------------------------------------------------------------
jobs="${VEXFS_KERNEL_JOBS:-2}"
release=$(planned_release)
say "building $name ($release): nice -n 19 make -j$jobs bzImage modules (log: $dir/.vexfs-build.log)"
(cd "$dir" && nice -n 19 make -j"$jobs" bzImage modules > .vexfs-build.log 2>&1) &
mk=$!
trap 'kill "$mk" 2>/dev/null || true' EXIT INT TERM
while kill -0 "$mk" 2>/dev/null; do
    for _ in $(seq 60); do kill -0 "$mk" 2>/dev/null || break; sleep 1; done
    kill -0 "$mk" 2>/dev/null || break
    say "building $name: $(grep -c '^  CC ' "$dir/.vexfs-build.log" || true) files compiled, $(( ($(date +%s) - start) / 60 )) min, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
rc=0
wait "$mk" || rc=$?
trap - EXIT INT TERM
if [ "$rc" != 0 ]; then
    tail -n 40 "$dir/.vexfs-build.log" >&2
    die "kernel build failed (exit $rc; log: $dir/.vexfs-build.log); rerun to resume"
fi
for f in include/config/kernel.release .config arch/x86/boot/bzImage vmlinux Module.symvers; do
    [ -f "$dir/$f" ] || die "build finished but $dir/$f is missing"
done
release=$(cat "$dir/include/config/kernel.release")
secs=$(( $(date +%s) - start ))
echo "$secs" > "$dir/.vexfs-build-seconds"
touch "$dir/.vexfs-ready"
say "kernel $name built in $(( secs / 60 )) min $(( secs % 60 )) s: $dir ($release)"
echo "$dir"
