#!/bin/sh
# Temporary busybox /init for manual image tests (not the agent): loads the transport
# modules and the module under test, exercises vexfs, then fires the fault named by
# vexfs.test=NAME on the kernel command line (none: only the functional test).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "VEXFS-TEST: $* (uptime $(up))"; }
say "init started kernel=$(uname -r)"
fault=none
for p in $(cat /proc/cmdline); do case "$p" in vexfs.test=*) fault="${p#vexfs.test=}";; esac; done
# boot: measure boot time to /init only
[ "$fault" = boot ] && poweroff -f
while read -r ko; do
    case "$ko" in ''|'#'*) continue;; esac
    insmod "$ko" || say "insmod $ko FAILED"
done < /etc/vexfs/modules-load
insmod /lib/modules/vexfs/vexfs.ko || say "insmod vexfs FAILED"
say "modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
grep -q vexfs /proc/filesystems && say "vexfs registered"

# functional test
mount -t vexfs none /mnt && say "mounted" || say "mount FAILED"
echo hello > /mnt/a.txt && echo world >> /mnt/a.txt
mkdir /mnt/d && echo x > /mnt/d/b && mv /mnt/d/b /mnt/d/c
say "read: $(cat /mnt/a.txt | tr '\n' ' ')"
say "ls: $(ls /mnt /mnt/d | tr '\n' ' ')"
dd if=/dev/zero of=/mnt/big bs=4096 count=64 2>/dev/null; say "big size $(stat -c %s /mnt/big)"
: > /mnt/a.txt; say "truncated size $(stat -c %s /mnt/a.txt)"
chmod 600 /mnt/a.txt; su vexuser -s /bin/sh -c 'cat /mnt/a.txt' 2>/dev/null && say "perm test FAILED" || say "perm denied for vexuser: ok"
rm /mnt/d/c && rmdir /mnt/d && rm /mnt/big /mnt/a.txt
say "after rm: [$(ls /mnt)]"
umount /mnt && say "unmounted"
mount -t vexfs -o sb=corrupt none /mnt; rc=$?
say "corrupt-sb mount rc=$rc"
mount -t vexfs -o magic=0x12345678 none /mnt; say "bad-magic mount rc=$?"
say "trigger list: $(cut -f1 /sys/kernel/debug/vexfs/trigger | tr '\n' ' ')"

T=/sys/kernel/debug/vexfs/trigger
slab() { grep SUnreclaim /proc/meminfo | tr -s ' '; }
say "fault=$fault"
case "$fault" in
  none) ;;
  leak)
    say "before: $(slab)"
    echo leak > $T; say "leak rc=$?"
    say "after 1: $(slab) leaked_bytes=$(cat /sys/kernel/debug/vexfs/leaked_bytes)"
    echo 2048 > /sys/module/vexfs/parameters/leak_per_mount_kb
    mount -t vexfs none /mnt && umount /mnt
    say "after mount: $(slab) leaked_bytes=$(cat /sys/kernel/debug/vexfs/leaked_bytes)" ;;
  corrupt_inode)
    mount -t vexfs none /mnt; echo data > /mnt/f
    echo corrupt_inode > $T; say "corrupt_inode rc=$?"
    cat /mnt/f; say "read after corruption rc=$?"
    echo more >> /mnt/f; say "write after corruption rc=$?"
    umount /mnt; say "umount rc=$?" ;;
  arm_warn)
    echo warn > /sys/kernel/debug/vexfs/arm; say "armed: $(cat /sys/kernel/debug/vexfs/arm)"
    mount -t vexfs none /mnt; sh -c 'echo x > /mnt/f'; say "write rc=$?"
    sh -c 'echo y > /mnt/f'; say "second write rc=$? (fault fires once)"; umount /mnt ;;
  rmmod)
    mount -t vexfs none /mnt; echo x > /mnt/f
    rmmod vexfs; say "rmmod while mounted rc=$? (expected failure)"
    umount /mnt; rmmod vexfs; say "rmmod rc=$?"
    grep -q vexfs /proc/filesystems && say "still registered" || say "unregistered" ;;
  armed_null)
    mount -t vexfs -o fault=null none /mnt; sh -c 'echo boom > /mnt/f'; say "write rc=$?" ;;
  corrupt_sb) ;;  # the corrupt-superblock mounts above are the test
  deadlock|thread_deadlock)
    sh -c "echo $fault > $T" &
    sleep 25
    rmmod vexfs; say "rmmod after $fault rc=$? (expected EBUSY: module pinned)" ;;
  softlockup)
    sh -c "echo $fault > $T" &
    sleep 36 ;;
  *)
    # from a child: an oops in PID 1 itself would panic ("Attempted to kill init")
    sh -c "echo $fault > $T"; say "trigger $fault rc=$?"
    sleep 1 ;;
esac
say "tainted=$(cat /proc/sys/kernel/tainted)"
say "done"
poweroff -f
