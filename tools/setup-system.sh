#!/bin/sh
# Installs the Debian packages the tests need, when running as root and they are
# missing. Without root it only reports what is missing; tests needing it skip.
set -eu

# package:command-or-path that proves it is installed
NEEDED="
shellcheck:/usr/bin/shellcheck
busybox:/bin/busybox
dash:/bin/dash
iproute2:/sbin/ip
iptables:/usr/sbin/iptables
util-linux:/usr/bin/flock
golang-go:/usr/bin/go
golang-github-appc-cni-dev:/usr/share/gocode/src/github.com/containernetworking/cni/libcni/api.go
containernetworking-plugins:/usr/lib/cni/bridge
strace:/usr/bin/strace
iputils-ping:/usr/bin/ping
podman:/usr/bin/podman
runc:/usr/sbin/runc
busybox-static:/usr/share/doc/busybox-static
"

missing=""
for entry in $NEEDED; do
	pkg=${entry%%:*}
	path=${entry#*:}
	[ -e "$path" ] || missing="$missing $pkg"
done
# busybox-static provides busybox (statically linked, as the podman test's image
# needs) and conflicts with it: never ask apt for both.
case "$missing " in
*" busybox-static "*) missing=$(for p in $missing; do [ "$p" = busybox ] || printf ' %s' "$p"; done) ;;
esac

[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "setup-system: not root; missing Debian packages:$missing (tests that need them will skip)" >&2
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup-system: no apt-get; install these yourself:$missing" >&2
	exit 0
fi
echo "setup-system: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
