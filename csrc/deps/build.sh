#!/usr/bin/env bash
# Build the static, position-independent C dependencies of the extension:
# libbpf (>= 1.3, for TCX), libelf and zlib, from Debian source packages,
# compiled with `zig cc` against an old glibc so the wheel stays manylinux.
#
# Usage: csrc/deps/build.sh [--install-tools]   prints the install prefix on stdout
#
# The build tools (clang, dpkg-dev, make, ...) must be there; a missing one is an
# error that names its package. --install-tools (what `nox -s deps` passes)
# installs them with apt-get instead; nothing else ever installs on the system.
# Environment:
#   FLOWLABEL_DEPS_CACHE   cache root (default: ~/.cache/flowlabel-deps)
#   FLOWLABEL_GLIBC        glibc floor for zig's target (default: 2.28)
#   FLOWLABEL_DEBIAN_MIRROR  Debian archive URI (default: the one apt already uses)
#   FLOWLABEL_ARCH         target architecture, x86_64 or aarch64 (default: this machine's);
#                          zig cross-compiles, so both can be built on one host
#   ZIG                    zig executable (default: the one of PyPI's `ziglang`)
#
# The newest build for an architecture is also linked as CACHE/ARCH-glibcVERSION,
# a stable path for builds that cannot run this script (cibuildwheel's containers).
#
# Debian's own static archives are not PIC, so they cannot go into a Python
# extension; that is why everything is rebuilt here. The system's apt sources
# are left alone: a private sources list and lists directory hold deb-src.
set -euo pipefail

# The source packages, pinned: each version with the SHA-256 of its .dsc, which
# lists the checksums of the tarballs that dpkg-source verifies when unpacking.
# libbpf comes from trixie (bookworm has only 1.1, without TCX). To move a pin,
# take both from `apt-get source --print-uris PACKAGE/SUITE`; the Debian mirror
# keeps only each suite's current versions, snapshot.debian.org every one
# (FLOWLABEL_DEBIAN_MIRROR=https://snapshot.debian.org/archive/debian/DATE).
LIBBPF_VERSION=1.5.0-3
LIBBPF_DSC_SHA256=b8fdd3a9c58a13d13e9da0927062f1237303db3a804207e423ec4335119d3245
ELFUTILS_VERSION=0.188-2.1
ELFUTILS_DSC_SHA256=2e73c5bfe9d0ddbf837742d638c43b049590ae1de8f6e3d9c2740c28e2550760
ZLIB_VERSION=1:1.2.13.dfsg-1
ZLIB_DSC_SHA256=3fa1e6b2fc525062aa88207dda52fed8e045373c809d362fe8a2bfbf7cf515a8

install_tools=0
case "${1:-}" in
    --install-tools) install_tools=1 ;;
    "") ;;
    *) echo "usage: $0 [--install-tools]" >&2; exit 2 ;;
esac

die() { echo "build-deps: error: $*" >&2; exit 1; }
log() { echo "build-deps: $*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
glibc=${FLOWLABEL_GLIBC:-2.28}
arch=${FLOWLABEL_ARCH:-$(uname -m)}
cache_root=${FLOWLABEL_DEPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowlabel-deps}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Tools the build needs: an error naming the packages when missing, unless --install-tools.
need_tools() {
    local missing=()
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    command -v clang >/dev/null || missing+=(clang)
    command -v llvm-strip >/dev/null || missing+=(llvm)
    command -v make >/dev/null || missing+=(make)
    command -v gawk >/dev/null || missing+=(gawk)
    command -v m4 >/dev/null || missing+=(m4)
    command -v pkg-config >/dev/null || missing+=(pkg-config)
    command -v ar >/dev/null || missing+=(binutils)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v gpgv >/dev/null || missing+=(gpgv)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$install_tools" = 0 ]; then
        die "missing build tools; install them with: apt-get install ${missing[*]} (or run nox -s deps, which does)"
    fi
    command -v apt-get >/dev/null || die "missing tools (${missing[*]}) and no apt-get to install them"
    log "installing ${missing[*]}"
    as_root apt-get update -qq >/dev/null || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "could not install ${missing[*]}"
}

find_zig() {
    if [ -n "${ZIG:-}" ]; then echo "$ZIG"; return; fi
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null && "$py" -c 'import ziglang' 2>/dev/null; then
            "$py" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))'
            return
        fi
    done
    die "zig not found: pip install ziglang, or set ZIG"
}

# The Debian archive URI apt is configured with (deb822 or one-line format).
debian_mirror() {
    if [ -n "${FLOWLABEL_DEBIAN_MIRROR:-}" ]; then echo "$FLOWLABEL_DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}')
    [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:.*\/debian\/?$/) {print $i; exit}}')
    [ -n "$uri" ] || die "no Debian archive found in apt's sources; set FLOWLABEL_DEBIAN_MIRROR"
    echo "${uri%/}"
}

zig=$(find_zig)
"$zig" version >/dev/null 2>&1 || die "zig at $zig does not run"
zig_version=$("$zig" version)

script_sum=$(sha256sum "$0" | cut -c1-12)
key="$arch-glibc$glibc-zig$zig_version-libbpf_${LIBBPF_VERSION#*:}-elfutils_${ELFUTILS_VERSION#*:}"
key="$key-zlib_${ZLIB_VERSION#*:}-$script_sum"
prefix="$cache_root/$key"
if [ -e "$prefix/.complete" ]; then
    log "cached: $prefix"
    ln -sfn "$key" "$cache_root/$arch-glibc$glibc"
    echo "$prefix"
    exit 0
fi

need_tools
apt_dir="$cache_root/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
mirror=$(debian_mirror)
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
    for suite in bookworm trixie; do
        echo "deb-src [signed-by=$keyring] $mirror $suite main"
    done
} > "$apt_dir/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
          -o "APT::Get::Only-Source=true" -o "APT::Sandbox::User=root" -q)

# Refresh the private index at most once a day.
if [ -z "$(find "$apt_dir/lists" -maxdepth 1 -name '*Sources*' -mmin -1440 2>/dev/null | head -n 1)" ]; then
    log "fetching source indexes from $mirror"
    apt-get "${apt_opts[@]}" update >&2 || die "cannot fetch Debian source indexes from $mirror"
fi

log "building $key"
work=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rm -rf "$prefix"
mkdir -p "$prefix/lib" "$prefix/include"

# A compiler wrapper: configure scripts cope better with one word than with "zig cc -target ...".
cat > "$work/cc" <<CC
#!/bin/sh
exec "$zig" cc -target $arch-linux-gnu.$glibc "\$@"
CC
chmod +x "$work/cc"
export CC="$work/cc" AR="$zig ar" RANLIB="$zig ranlib"
export CFLAGS="-O2 -fPIC -fno-sanitize=undefined"
# Cross builds: autoconf must not try to run what it compiles.
cross=()
[ "$arch" = "$(uname -m)" ] || cross=(--host="$arch-linux-gnu")

fetch() {  # fetch PACKAGE VERSION DSC_SHA256 -> prints the extracted source directory
    local dsc="$work/${1}_${2#*:}.dsc"
    (cd "$work" && apt-get "${apt_opts[@]}" source "$1=$2" >"$work/$1.fetch.log" 2>&1) \
        || { tail -n 20 "$work/$1.fetch.log" >&2
             die "cannot fetch source package $1 $2 from $mirror (it keeps only current versions: move the pin, or use snapshot.debian.org)"; }
    [ "$(sha256sum "$dsc" | cut -d' ' -f1)" = "$3" ] \
        || die "$1 $2: $(basename "$dsc") does not have the pinned SHA-256 $3"
    find "$work" -maxdepth 1 -mindepth 1 -type d -name "$1-*" | head -n 1
}

run_logged() {  # run_logged NAME COMMAND... ; keeps output quiet unless it fails
    local name=$1; shift
    if ! "$@" >"$work/$name.log" 2>&1; then
        tail -n 40 "$work/$name.log" >&2
        die "$name failed (see output above)"
    fi
}

log "zlib $ZLIB_VERSION"
src=$(fetch zlib "$ZLIB_VERSION" "$ZLIB_DSC_SHA256")
(cd "$src" && run_logged zlib-configure ./configure --static --prefix="$prefix" \
    && run_logged zlib-make make -j"$(nproc)" libz.a \
    && cp libz.a "$prefix/lib/" && cp zlib.h zconf.h "$prefix/include/")
[ -e "$prefix/lib/libz.a" ] || die "zlib build produced no libz.a"

log "libelf (elfutils $ELFUTILS_VERSION)"
src=$(fetch elfutils "$ELFUTILS_VERSION" "$ELFUTILS_DSC_SHA256")
(cd "$src" \
    && run_logged elfutils-configure ./configure "${cross[@]}" --disable-debuginfod --disable-libdebuginfod \
        --disable-nls --without-bzlib --without-lzma --without-zstd --disable-werror \
        CPPFLAGS="-I$prefix/include" LDFLAGS="-L$prefix/lib" \
    && run_logged elfutils-lib make -j"$(nproc)" -C lib \
    && run_logged elfutils-libelf make -j"$(nproc)" -C libelf libelf_pic.a \
    && cp libelf/libelf_pic.a "$prefix/lib/libelf.a" \
    && cp libelf/libelf.h libelf/gelf.h libelf/nlist.h "$prefix/include/")
[ -e "$prefix/lib/libelf.a" ] || die "elfutils build produced no libelf.a"

log "libbpf $LIBBPF_VERSION"
src=$(fetch libbpf "$LIBBPF_VERSION" "$LIBBPF_DSC_SHA256")
mkdir -p "$work/libbpf-obj"
run_logged libbpf make -j"$(nproc)" -C "$src/src" BUILD_STATIC_ONLY=1 OBJDIR="$work/libbpf-obj" \
    EXTRA_CFLAGS="-I$prefix/include" PREFIX="$prefix" LIBDIR="$prefix/lib" \
    DESTDIR= install install_uapi_headers
[ -e "$prefix/lib/libbpf.a" ] || die "libbpf build produced no libbpf.a"

echo "libbpf $LIBBPF_VERSION, elfutils $ELFUTILS_VERSION, zlib $ZLIB_VERSION, zig $zig_version, glibc $glibc" \
    > "$prefix/VERSIONS"
touch "$prefix/.complete"
ln -sfn "$key" "$cache_root/$arch-glibc$glibc"
log "done: $prefix"
echo "$prefix"
