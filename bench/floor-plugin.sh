#!/bin/sh
# bench/floor-plugin.sh: the floor of podnet's ADD and DEL design, for bench_plugin.py only.
#
# A CNI plugin that does nothing but the kernel work podnet's plugin does, and takes its
# lease the way the contract requires (under host-local's lock), with the same processes
# arranged the same way on the critical path: dash starts, then one pipeline of the host
# side's `ip -batch` (the veth pair, one queue per end, its peer created inside the pod's
# netns, on the bridge, up; the bridge's address and up state; both links shown, brief),
# a subshell that takes the lease and reads that output and writes the pod side's batch,
# and the pod side's `ip -batch`, started at once, which enters the pod's netns and waits
# for it (address, link up, default route, lo up, link shown); a fixed-shape result. The
# lease: util-linux flock on the store's lock file, then the next free address from
# last_reserved_ip.0 on, created with O_EXCL and host-local's "ID\r\nIFNAME" content, and
# last_reserved_ip.0 rewritten. No config check, no input validation, no reuse of a
# lease the pair holds, no rollback, no masquerade. DEL is podnet's one pod-side
# `ip` (the pod's interface deleted, which removes the pair),
# without releasing the lease (a bench run takes fewer than the 253 addresses). It exists
# to show how close podnet gets to the processes it cannot avoid; never install it on a
# node. Assumes the bridge cni0 exists with 10.244.1.1/24 (podnet's warm-up ADD in the
# bench creates it in the same node); bench_plugin.py sets BRIDGE to its name.
set -eu
BRIDGE=cni0
STORE=/var/lib/cni/networks/podnet-floor
NL='
'
IP=/usr/sbin/ip
[ -x "$IP" ] || IP=/sbin/ip
ID=${CNI_CONTAINERID:-}
VETH=vf${ID%"${ID#???????????}"}
case ${CNI_COMMAND:-} in
ADD)
	[ -d "$STORE" ] || mkdir -p "$STORE"
	out=$(
		exec 3>&1
		"$IP" -br -batch - 2>&1 <<EOF | {
link add name $VETH mtu 1500 numtxqueues 1 numrxqueues 1 master $BRIDGE up type veth peer name $CNI_IFNAME mtu 1500 numtxqueues 1 numrxqueues 1 netns $CNI_NETNS
addr replace 10.244.1.1/24 dev $BRIDGE
link set dev $BRIDGE up
link show dev $BRIDGE
link show dev $VETH
EOF
			exec 9>>"$STORE/lock"
			flock 9
			set -C
			last=
			read -r last 2>/dev/null <"$STORE/last_reserved_ip.0" || :
			n=${last##*.}
			case $n in "" | *[!0-9]*) n=1 ;; esac
			left=253
			addr=
			while [ "$left" -gt 0 ]; do
				n=$((n % 253 + 2))
				if printf '%s\r\n%s' "$CNI_CONTAINERID" "$CNI_IFNAME" 2>/dev/null >"$STORE/10.244.1.$n"; then
					addr=10.244.1.$n
					printf '%s' "$addr" >|"$STORE/last_reserved_ip.0"
					break
				fi
				left=$((left - 1))
			done
			exec 9>&-
			host=
			while IFS= read -r line; do host=$host$line; done
			printf '%s\n' "$host" "=$addr" >&3
			[ -n "$addr" ] || exit 1
			printf '%s\n' "addr add $addr/24 dev $CNI_IFNAME" "link set dev $CNI_IFNAME up" \
				"route add 0.0.0.0/0 via 10.244.1.1 dev $CNI_IFNAME" "link set dev lo up" "link show dev $CNI_IFNAME"
		} | "$IP" -br -n "${CNI_NETNS##*/}" -batch - 2>&1
	)
	addr=${out#*"$NL="}
	addr=${addr%%"$NL"*}
	[ -n "$addr" ] && [ "$addr" != "$out" ]
	printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"interface":0,"address":"%s/24","gateway":"10.244.1.1"}]}\n' \
		"$CNI_IFNAME" "$CNI_NETNS" "$addr"
	;;
DEL)
	"$IP" -n "${CNI_NETNS##*/}" link del dev "$CNI_IFNAME" 2>/dev/null || :
	;;
VERSION) printf '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\n' ;;
*) ;;
esac
