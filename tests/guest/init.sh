#!/bin/busybox sh
# PID 1 of the test guest (busybox-static).
#
# Loading qemu_fw_cfg is what makes the dumps carry VMCOREINFO: when the driver binds to
# QEMU's fw_cfg device it writes the address of the kernel's VMCOREINFO note into the
# "etc/vmcoreinfo" file of the vmcoreinfo device, and dump-guest-memory reads the note
# from there. No crash (sysrq c) is needed: the note is complete from boot on.
#
# Console (ttyS0): the iomem map, the banner and a ready line, each prefixed
# "vmemfs-guest: ". Second serial port (ttyS1): /proc/kallsyms, then an end line.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for module in $(cat /lib/modules/load-order); do
    insmod "/lib/modules/$module" || echo "vmemfs-guest: insmod $module failed"
done
if [ -e /sys/firmware/qemu_fw_cfg/by_name/etc/vmcoreinfo ]; then
    echo "vmemfs-guest: vmcoreinfo device: present"
else
    echo "vmemfs-guest: vmcoreinfo device: missing"
fi

# The symbols: nokaslr and root, so the addresses are System.map's. Raw mode keeps "\n".
stty -F /dev/ttyS1 raw -echo
cat /proc/kallsyms > /dev/ttyS1
echo "vmemfs-guest: kallsyms end" > /dev/ttyS1

while IFS= read -r line; do
    echo "vmemfs-guest: iomem: $line"
done < /proc/iomem
echo "vmemfs-guest: banner: $(cat /proc/version)"
sync
echo "vmemfs-guest: ready"
while :; do sleep 3600; done
