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
#   br.fault=a|b    instead of recording (scripts/blockfault.py): no log;
#                   after the install, dm device a (targets) or b (state dir)
#                   becomes dm-flakey with error_writes, failing every write
#                   from br.up=SECONDS after its table was loaded; the
#                   upgrade runs into it, then the linear table comes back
#                   (the disk returns) and the file systems are unmounted.
#                   br.up=@POINT[:N] starts the errors where stagehand
#                   reaches its kill point POINT instead: it stops itself
#                   there (STAGEHAND_STOP_AT), the table is loaded without
#                   freezing the file system, and it goes on into the errors
# It prints BLOCKREPLAY-OP <op> <exit code> after each operation (and
# BLOCKREPLAY-ERR <line> for the last lines a failing one printed) and
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
mnt= state= fs=ext4 sectors= layout=same skip= fault= up=0 verbose=
for w in $(cat /proc/cmdline); do
    case "$w" in
        br.mnt=*) mnt="${w#br.mnt=}" ;;
        br.state=*) state="${w#br.state=}" ;;
        br.fs=*) fs="${w#br.fs=}" ;;
        br.sectors=*) sectors="${w#br.sectors=}" ;;
        br.layout=*) layout="${w#br.layout=}" ;;
        br.skip=*) skip="${w#br.skip=}" ;;
        br.fault=*) fault="${w#br.fault=}" ;;
        br.up=*) up="${w#br.up=}" ;;
    esac
done
at=
case "$up" in @*)
    at="${up#@}"
    up=0
    ;;
esac

for m in crc32c_generic virtio_pci virtio_blk dm_mod dm_log_writes dm_flakey "$fs"; do
    modprobe "$m" || fail "modprobe $m"
done
i=0
while { [ ! -b /dev/vda ] || { [ -z "$fault" ] && [ ! -b /dev/vdb ]; }; } && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done

dm() { /dmsetup/dmsetup --noudevsync "$@" || fail "dmsetup $*"; }
mark() { if [ -z "$fault" ]; then dm message lw 0 mark "$1"; fi; }
if [ -n "$fault" ]; then
    dm create a --table "0 $sectors linear /dev/vda 0"
    if [ "$layout" = split ]; then dm create b --table "0 $sectors linear /dev/vda $sectors"; fi
elif [ "$layout" = split ]; then
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
# The pid of a stagehand that stopped itself (state T), while the job BG
# runs; empty once BG has ended without one.
stopped_stagehand() {
    set +f
    while kill -0 "$1" 2> /dev/null; do
        for st in /proc/[0-9]*/stat; do
            line=$(cat "$st" 2> /dev/null) || continue
            case "$line" in *"(stagehand) T "*)
                p="${st#/proc/}"
                echo "${p%/stat}"
                set -f
                return
                ;;
            esac
        done
        sleep 0.05
    done
    set -f
}
run_op() { # OP [TAG]
    if [ -n "$skip" ]; then export STAGEHAND_SKIP_FSYNC="$skip"; fi
    case "$1" in
        install | upgrade)
            /stagehand/stagehand ${verbose:---quiet} --state-dir "$state" install "oci-layout:/payload/layout:$2" \
                --name p --to "$dest/app" --map "*.so=$dest/lib" --map "*.control=$dest/ext" --map "*.sql=$dest/ext"
            ;;
        uninstall) /stagehand/stagehand --state-dir "$state" --quiet uninstall p ;;
    esac
}
# The device under the fault: dm-flakey over the same sectors, every write
# failing from $up seconds on; then linear again.
offset=0
if [ "$fault" = b ]; then offset=$sectors; fi
flakey() { # [--nolockfs]
    dm suspend "$@" "$fault"
    dm reload "$fault" --table "0 $sectors flakey /dev/vda $offset $up 3600 1 error_writes"
    dm resume "$fault"
}
restore() {
    dm suspend --nolockfs "$fault"
    dm reload "$fault" --table "0 $sectors linear /dev/vda $offset"
    dm resume "$fault"
}
ops="install:v1 upgrade:v2 uninstall:"
if [ -n "$fault" ]; then
    ops="install:v1 upgrade:v2"
    # A panic shows where; the host keeps the whole tail.
    export RUST_BACKTRACE=1
    BR_ERR_LINES=60
    # The upgrade's own process removes v1 (a fault point there stops it,
    # and its exit code says how the removal ended).
    export STAGEHAND_CLEANUP=wait
fi
for op in $ops; do
    name="${op%%:*}"
    mark "$name-start"
    verbose=
    if [ -n "$fault" ] && [ "$name" = upgrade ]; then
        if [ -z "$at" ]; then
            flakey
            # The clocks of the kernel's messages and of stagehand's log, side
            # by side, so a finding can be placed against the errors' start.
            say "CLOCK flakey loaded at uptime $(cut -d' ' -f1 /proc/uptime), $(date -u +%H:%M:%S) UTC, errors after ${up} s"
        fi
        verbose=-v
    fi
    rc=0
    if [ -n "$verbose" ] && [ -n "$at" ]; then
        (
            export STAGEHAND_STOP_AT="$at"
            run_op "$name" "${op#*:}"
        ) 2> /tmp/err &
        bg=$!
        spid=$(stopped_stagehand "$bg")
        if [ -n "$spid" ]; then
            # Not frozen: what the file system holds in memory at the point
            # meets the failing disk as it is.
            flakey --nolockfs
            say "CLOCK stopped at $at; flakey loaded at uptime $(cut -d' ' -f1 /proc/uptime), errors from now"
            kill -CONT "$spid"
        else
            say "CLOCK never reached $at: no errors"
        fi
        wait "$bg" || rc=$?
    else
        run_op "$name" "${op#*:}" 2> /tmp/err || rc=$?
    fi
    if [ "$rc" != 0 ]; then tail -n "${BR_ERR_LINES:-3}" /tmp/err | while read -r l; do say "ERR $l"; done; fi
    if [ -n "$verbose" ]; then
        say "CLOCK upgrade ended at uptime $(cut -d' ' -f1 /proc/uptime)"
        grep ' DEBUG ' /tmp/err | tail -n 40 | while read -r l; do say "LOG $l"; done
    fi
    # Marked only when stagehand reported success: the replay holds every
    # state whose durable part reaches past this point to the new version.
    if [ "$rc" = 0 ]; then mark "$name-ok"; fi
    say "OP $name $rc"
done
if [ -n "$fault" ]; then
    # The disk is back; unmount as a reboot would (a file system that shut
    # itself down on the errors unmounts without writing).
    restore
    umount "$mnt/a" || say "UMOUNT-FAILED a"
    if [ "$layout" = split ]; then umount "$mnt/b" || say "UMOUNT-FAILED b"; fi
    sync
    say "END"
    poweroff -f
fi
# What the last command left to its process behind (the removal of what it
# replaced) ends first: a writer waits for it. Then a clean unmount and the
# removal of the targets complete the log (the log-writes target writes its
# last entries and super block on removal).
/stagehand/stagehand --state-dir "$state" --quiet repair || say "ERR repair after the last op"
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
