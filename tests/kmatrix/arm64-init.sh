#!/bin/sh
# /init of the arm64 guest (busybox). Its root is an ext4 image of a Debian arm64
# tree that debootstrap made on the host (a disk: 9p cannot serve the device
# nodes that the second stage makes). flowlabel.mode=stage2 finishes that tree
# (debootstrap's second stage, which must run on arm64); flowlabel.mode=run
# (qemu discards the disk's writes) adds the kernel's modules, the project
# (/mnt/project, read-only) and the run directory (/mnt/run). Either way
# /mnt/run/command.sh runs as root and its exit status goes to
# /mnt/run/exit-status, which is mounted without a cache so that every write
# reaches the host before the guest powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.load); do insmod "$m" || echo "guest: insmod $m failed"; done

param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
MODE=$(param flowlabel.mode)
P9=trans=virtio,version=9p2000.L,msize=512000

fail() { echo "guest: $*"; poweroff -f; }
mkdir -p /sysroot
mount -t ext4 /dev/vda /sysroot || fail "cannot mount the root disk"
if [ "$MODE" != stage2 ]; then
  MODULES=/sysroot/lib/modules/$(uname -r)
  mkdir -p "$MODULES" /sysroot/mnt/project
  mount -t 9p -o "$P9,cache=loose,ro" modules "$MODULES" || fail "cannot mount the kernel's modules"
  mount -t 9p -o "$P9,cache=loose,ro" project /sysroot/mnt/project || fail "cannot mount the project"
fi
mkdir -p /sysroot/mnt/run && mount -t 9p -o "$P9" run /sysroot/mnt/run || fail "cannot mount the run directory"

mount -t proc proc /sysroot/proc
mount -t sysfs sysfs /sysroot/sys
mount -t devtmpfs devtmpfs /sysroot/dev
if [ "$MODE" != stage2 ]; then
  mkdir -p /sysroot/dev/pts /sysroot/dev/shm
  mount -t devpts devpts /sysroot/dev/pts
  mount -t tmpfs tmpfs /sysroot/dev/shm
  mount -t tmpfs tmpfs /sysroot/run
  mount -t bpf bpf /sysroot/sys/fs/bpf
  mount -t cgroup2 cgroup2 /sysroot/sys/fs/cgroup
  mount -t tracefs tracefs /sysroot/sys/kernel/tracing 2>/dev/null
  # Modules load on demand (veth, sch_ingress, cls_bpf) with the root's own modprobe; the
  # kernel runs its helper in this initramfs, so it hops into the root first.
  printf '#!/bin/sh\nexec chroot /sysroot /sbin/modprobe "$@"\n' > /bin/modprobe-in-root
  chmod +x /bin/modprobe-in-root
  echo /bin/modprobe-in-root > /proc/sys/kernel/modprobe
fi
hostname arm64

chroot /sysroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb /bin/sh /mnt/run/command.sh </dev/console >/dev/console 2>&1
echo $? > /sysroot/mnt/run/exit-status
sync
poweroff -f
