#!/bin/sh
# Builds KVM with kvm-user-nondet.patch (KVM_CAP_X86_USER_NONDET) out of tree for a
# Debian 12 kernel: kvm.ko, kvm-amd.ko and kvm-intel.ko.
#
#   kmod-patch/build.sh [KERNEL_RELEASE]     e.g. 6.1.0-57-amd64
#
# Without KERNEL_RELEASE it builds for the newest linux-headers-6.1.0-*-amd64 the
# package index has (which is what `xtask lab` boots). It downloads, with
# `apt-get download` (no root needed, nothing is installed), the Debian packages
# linux-source-6.1, linux-headers-<release>, linux-headers-<abi>-common and
# linux-kbuild-6.1 of that kernel's version; unpacks them into a private tree;
# copies the KVM sources (arch/x86/kvm, virt/kvm) into the headers; applies the
# patch there and builds. Needs apt-get, dpkg-deb, patch, make, xz and gcc-12.
#
# Everything lives under $KMOD_CACHE (default: target/kmod of this checkout):
#   debs/                 the downloaded packages, kept between runs
#   <release>/tree/       the unpacked, patched tree (rebuilt from scratch each run)
#   <release>/modules/    the three modules; the last line printed is this path
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${KMOD_CACHE:-$(dirname "$here")/target/kmod}
patch_file=$here/kvm-user-nondet.patch

release=${1:-}
if [ -z "$release" ]; then
    release=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' |
        awk '{print $1}' | sort -V | tail -n 1 | sed 's/^linux-headers-//')
    [ -n "$release" ] || { echo "build.sh: no linux-headers-6.1.0-*-amd64 in the package index (apt-get update?)" >&2; exit 1; }
fi
case $release in
*-amd64) ;;
*) echo "build.sh: kernel release '$release' is not of the form 6.1.0-N-amd64" >&2; exit 1 ;;
esac
abi=${release%-amd64}
version=$(apt-cache show "linux-headers-$release" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "$version" ] || { echo "build.sh: linux-headers-$release is not in the package index" >&2; exit 1; }

debs=$cache/debs
mkdir -p "$debs"
fetch() { # package version
    if ! ls "$debs/$1_$(echo "$2" | sed 's/:/%3a/')_"*.deb >/dev/null 2>&1; then
        (cd "$debs" && apt-get download -q "$1=$2") >&2 # stdout is the path
    fi
    ls "$debs/$1_$(echo "$2" | sed 's/:/%3a/')_"*.deb
}
headers=$(fetch "linux-headers-$release" "$version")
common=$(fetch "linux-headers-$abi-common" "$version")
kbuild=$(fetch linux-kbuild-6.1 "$version")
source=$(fetch linux-source-6.1 "$version")

work=$cache/$release
rm -rf "$work/tree" "$work/modules"
mkdir -p "$work/tree" "$work/modules"
for deb in "$headers" "$common" "$kbuild" "$source"; do
    dpkg-deb -x "$deb" "$work/tree"
done
src=$work/tree/usr/src
hdr=$src/linux-headers-$release
com=$src/linux-headers-$abi-common
# The headers' Makefile includes the common tree by its installed, absolute path.
sed -i "s#/usr/src/linux-headers-$abi-common#$com#" "$hdr/Makefile"
tar -xJf "$src/linux-source-6.1.tar.xz" -C "$src" \
    linux-source-6.1/arch/x86/kvm linux-source-6.1/virt/kvm
cp -r "$src/linux-source-6.1/arch/x86/kvm" "$com/arch/x86/"
mkdir -p "$com/virt"
cp -r "$src/linux-source-6.1/virt/kvm" "$com/virt/"
rm -rf "$src/linux-source-6.1" "$src/linux-source-6.1.tar.xz"
# The patch also touches two headers (the uapi kvm.h and asm/kvm_host.h), which
# the headers package carries; they are only patched in this private copy.
patch -p1 -s -d "$com" <"$patch_file"

make -s -C "$hdr" M="$com/arch/x86/kvm" -j"$(nproc)" modules
for module in kvm kvm-amd kvm-intel; do
    cp "$com/arch/x86/kvm/$module.ko" "$work/modules/"
done
echo "build.sh: patched KVM for $release ($version):" >&2
ls -l "$work/modules" >&2
echo "$work/modules"
