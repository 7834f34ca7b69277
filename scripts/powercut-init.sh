#!/bin/busybox sh
# /init of the power-cut guest (scripts/powercut.py builds the initramfs):
# busybox-static, Debian's kernel modules, the stagehand binary under test
# and the OCI layout of the artifact. It never runs anything of the host.
#
# Kernel command line (set by the host):
#   pc.mode=cut      (v1 is installed on the disks already) print POWERCUT-START, upgrade to v2, print
#                    POWERCUT-DONE <exit code>, then idle WITHOUT sync or
#                    unmount: the host kills qemu at a random instant (the
#                    power cut), so whatever this kernel has not written to
#                    the virtual disks is lost
#   pc.mnt=DIR       where the disks are mounted: DIR/a (vda, ext4, the
#                    targets) and DIR/b (vdb, the state dir's own disk when
#                    there is one); the same absolute path as on the host,
#                    because the journal records absolute paths
#   pc.statefs=none|ext4|btrfs   the second disk's file system
#   pc.state=DIR     the state dir
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /tmp /root
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root LC_ALL=C
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

say() { echo "POWERCUT-$*" > /dev/console; }
fail() {
    say "FAIL $*"
    poweroff -f
}

mode= mnt= statefs=none state=
for w in $(cat /proc/cmdline); do
    case "$w" in
        pc.mode=*) mode="${w#pc.mode=}" ;;
        pc.mnt=*) mnt="${w#pc.mnt=}" ;;
        pc.statefs=*) statefs="${w#pc.statefs=}" ;;
        pc.state=*) state="${w#pc.state=}" ;;
    esac
done

# modprobe reads /lib/modules/<release>/modules.dep (busybox depmod on the
# host) and loads every dependency first. crc32c is asked for by name
# through the crypto API: load its generic module explicitly.
for m in crc32c_generic virtio_pci virtio_blk ext4; do
    modprobe "$m" || fail "modprobe $m"
done
if [ "$statefs" = btrfs ]; then modprobe btrfs || fail "modprobe btrfs"; fi

i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
mkdir -p "$mnt/a" "$mnt/b"
mount -t ext4 /dev/vda "$mnt/a" || fail "mount vda"
if [ "$statefs" != none ]; then
    mount -t "$statefs" /dev/vdb "$mnt/b" || fail "mount vdb"
fi

dest="$mnt/a/dest"
sh_install() { # TAG
    /stagehand/stagehand --state-dir "$state" --quiet install "oci-layout:/payload/layout:$1" \
        --name p --to "$dest/app" --map "*.so=$dest/lib" --map "*.control=$dest/ext" --map "*.sql=$dest/ext"
}

case "$mode" in
    cut)
        say "START"
        rc=0
        sh_install v2 || rc=$?
        say "DONE $rc"
        # No sync, no unmount: wait for the power cut.
        while true; do sleep 3600; done
        ;;
    *) fail "unknown pc.mode '$mode'" ;;
esac
