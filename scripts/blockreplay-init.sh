#!/bin/busybox sh
# /init of the block-replay guest (scripts/blockreplay.py builds the
# initramfs): busybox-static, Debian's kernel modules, Debian's dmsetup with
# the libraries it links, the stagehand binary under test and the OCI layout
# of the artifact. It never runs anything of the host.
#
# Disks: vda holds the file systems (one, or two back to back for the
# split layout), vdb is the dm-log-writes log. The stack is
#   vda -> dm "lw" (log-writes, log on vdb) -> dm "a" [+ dm "b"] (linear)
# so every write of both file systems passes one log-writes target and
# the log orders them all (a flush of either is logged as one flush).
#
# Kernel command line (set by the host):
#   br.mnt=DIR      where the file systems are mounted: DIR/a (targets) and
#                   DIR/b (the state dir, split layout); the host's own path,
#                   because the journal records absolute paths
#   br.state=DIR    the state dir
#   br.fs=ext4|xfs|btrfs
#   br.sectors=N    512-byte sectors of each file system
#   br.layout=same|split
#   br.skip=POINT   STAGEHAND_SKIP_FSYNC for every stagehand run ("" none)
# It prints BLOCKREPLAY-OP <op> <exit code> after each operation and
# BLOCKREPLAY-END once the log is complete, then powers off.
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp /root
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root LC_ALL=C DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

say() { echo "BLOCKREPLAY-$*" > /dev/console; }
fail() {
    say "FAIL $*"
    poweroff -f
}

set -f # the skip may hold a *
mnt= state= fs=ext4 sectors= layout=same skip=
for w in $(cat /proc/cmdline); do
    case "$w" in
        br.mnt=*) mnt="${w#br.mnt=}" ;;
        br.state=*) state="${w#br.state=}" ;;
        br.fs=*) fs="${w#br.fs=}" ;;
        br.sectors=*) sectors="${w#br.sectors=}" ;;
        br.layout=*) layout="${w#br.layout=}" ;;
        br.skip=*) skip="${w#br.skip=}" ;;
    esac
done

for m in crc32c_generic virtio_pci virtio_blk dm_mod dm_log_writes "$fs"; do
    modprobe "$m" || fail "modprobe $m"
done
i=0
while { [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; } && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done

dm() { /dmsetup/dmsetup --noudevsync "$@" || fail "dmsetup $*"; }
mark() { dm message lw 0 mark "$1"; }
if [ "$layout" = split ]; then
    dm create lw --table "0 $((sectors * 2)) log-writes /dev/vda /dev/vdb"
    dm create a --table "0 $sectors linear /dev/mapper/lw 0"
    dm create b --table "0 $sectors linear /dev/mapper/lw $sectors"
else
    dm create lw --table "0 $sectors log-writes /dev/vda /dev/vdb"
    dm create a --table "0 $sectors linear /dev/mapper/lw 0"
fi
mkdir -p "$mnt/a" "$mnt/b"
mount -t "$fs" /dev/mapper/a "$mnt/a" || fail "mount a"
if [ "$layout" = split ]; then mount -t "$fs" /dev/mapper/b "$mnt/b" || fail "mount b"; fi
mark mounted

dest="$mnt/a/dest"
run_op() { # OP [TAG]
    if [ -n "$skip" ]; then export STAGEHAND_SKIP_FSYNC="$skip"; fi
    case "$1" in
        install | upgrade)
            /stagehand/stagehand --state-dir "$state" --quiet install "oci-layout:/payload/layout:$2" \
                --name p --to "$dest/app" --map "*.so=$dest/lib" --map "*.control=$dest/ext" --map "*.sql=$dest/ext"
            ;;
        uninstall) /stagehand/stagehand --state-dir "$state" --quiet uninstall p ;;
    esac
}
for op in install:v1 upgrade:v2 uninstall:; do
    name="${op%%:*}"
    mark "$name-start"
    rc=0
    run_op "$name" "${op#*:}" || rc=$?
    # Marked only when stagehand reported success: the replay holds every
    # state whose durable part reaches past this point to the new version.
    if [ "$rc" = 0 ]; then mark "$name-ok"; fi
    say "OP $name $rc"
done
# A clean unmount and the removal of the targets complete the log (the
# log-writes target writes its last entries and super block on removal).
umount "$mnt/a" || fail "umount a"
if [ "$layout" = split ]; then
    umount "$mnt/b" || fail "umount b"
    dm remove b
fi
dm remove a
dm remove lw
blockdev --flushbufs /dev/vdb
say "END"
poweroff -f
