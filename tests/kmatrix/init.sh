#!/bin/sh
# /init of a test guest (busybox). The host's root arrives over 9p read-only and
# becomes the guest's root under a throw-away tmpfs layer; the run directory
# arrives read-write at the same path. The command runs as root in that root;
# its exit status is written to the run directory, which is mounted without a
# cache so that every write reaches the host before the guest powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.load); do insmod "$m" || echo "guest: insmod $m failed"; done

param() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p"; }
RUN=$(param flowlabel.run)
MODULES=$(param flowlabel.modules)
MODPROBE=$(param flowlabel.modprobe)
P9=trans=virtio,version=9p2000.L,msize=512000

fail() { echo "guest: $*"; poweroff -f; }
mkdir -p /host /layer /sysroot
mount -t 9p -o "$P9,cache=loose,ro" hostroot /host || fail "cannot mount the host's root"
mount -t tmpfs -o size=75% tmpfs /layer && mkdir -p /layer/upper /layer/work
mount -t overlay -o lowerdir=/host,upperdir=/layer/upper,workdir=/layer/work,xino=off overlay /sysroot ||
  fail "cannot stack a writable layer on the host's root"
mkdir -p "/sysroot$RUN" && mount -t 9p -o "$P9" run "/sysroot$RUN" || fail "cannot mount $RUN"

mount -t proc proc /sysroot/proc
mount -t sysfs sysfs /sysroot/sys
mount -t devtmpfs devtmpfs /sysroot/dev
mkdir -p /sysroot/dev/pts /sysroot/dev/shm /sysroot/dev/net
# The node that opens (and so loads) tun, as systemd-tmpfiles makes it from modules.devname.
mknod /sysroot/dev/net/tun c 10 200
mount -t devpts devpts /sysroot/dev/pts
mount -t tmpfs tmpfs /sysroot/dev/shm
mount -t tmpfs tmpfs /sysroot/run
mount -t bpf bpf /sysroot/sys/fs/bpf
mount -t cgroup2 cgroup2 /sysroot/sys/fs/cgroup
mount -t tracefs tracefs /sysroot/sys/kernel/tracing 2>/dev/null
mount -t debugfs debugfs /sysroot/sys/kernel/debug 2>/dev/null

# Modules load on demand (veth, sch_ingress, cls_bpf, tun) from the unpacked
# package; the kernel runs its modprobe helper in this initramfs, so it hops
# into the real root first.
mkdir -p /sysroot/lib/modules && ln -sfn "$MODULES" "/sysroot/lib/modules/$(uname -r)"
printf '#!/bin/sh\nexec chroot /sysroot %s "$@"\n' "$MODPROBE" > /bin/modprobe-in-root
chmod +x /bin/modprobe-in-root
echo /bin/modprobe-in-root > /proc/sys/kernel/modprobe
hostname guest

chroot /sysroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb /bin/sh -c "ip link set lo up; exec /bin/sh '$RUN/command.sh'" \
  </dev/console >/dev/console 2>&1
echo $? > "/sysroot$RUN/exit-status"
sync
poweroff -f
