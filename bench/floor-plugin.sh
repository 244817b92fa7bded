#!/bin/sh
# bench/floor-plugin.sh: the floor of podnet's ADD and DEL design, for bench_plugin.py only.
#
# A CNI plugin that does nothing but the kernel work podnet's plugin does, with the same
# processes arranged the same way on the critical path: dash starts, then one pipeline of
# the host side's `ip -batch` (the veth pair, one queue per end, its peer created inside
# the pod's netns, on the bridge, up; the bridge's address and up state; both links
# shown, brief), a subshell that reads that output and writes the pod side's batch, and
# the pod side's `ip -batch`, started at once, which enters the pod's netns and waits for
# it (address, link up, default route, lo up, link shown); a fixed-shape result. No config
# check, no IPAM and no lock (the address comes from an unlocked counter file), no
# rollback, no masquerade. DEL is podnet's one pod-side `ip -batch` (the pod's interface
# deleted, which removes the pair; loopback down), without the leases. It exists to show
# how close podnet gets to the processes it cannot avoid; never install it on a node.
# Assumes the bridge cni0 exists with 10.244.1.1/24 (podnet's warm-up ADD in the bench
# creates it in the same node); bench_plugin.py sets BRIDGE to its name.
set -eu
BRIDGE=cni0
IP=/usr/sbin/ip
[ -x "$IP" ] || IP=/sbin/ip
ID=${CNI_CONTAINERID:-}
VETH=vf${ID%"${ID#???????????}"}
case ${CNI_COMMAND:-} in
ADD)
	n=0
	read -r n 2>/dev/null </var/lib/cni/floor-counter || n=0
	n=$((n % 250 + 1))
	echo "$n" >/var/lib/cni/floor-counter
	addr=10.244.1.$((n + 2))
	out=$(
		exec 3>&1
		"$IP" -br -batch - 2>&1 <<EOF | {
link add name $VETH mtu 1500 numtxqueues 1 numrxqueues 1 master $BRIDGE up type veth peer name $CNI_IFNAME mtu 1500 numtxqueues 1 numrxqueues 1 netns $CNI_NETNS
addr replace 10.244.1.1/24 dev $BRIDGE
link set dev $BRIDGE up
link show dev $BRIDGE
link show dev $VETH
EOF
			host=
			while IFS= read -r line; do host=$host$line; done
			printf '%s\n' "$host" >&3
			printf '%s\n' "addr add $addr/24 dev $CNI_IFNAME" "link set dev $CNI_IFNAME up" \
				"route add 0.0.0.0/0 via 10.244.1.1 dev $CNI_IFNAME" "link set dev lo up" "link show dev $CNI_IFNAME"
		} | "$IP" -br -n "${CNI_NETNS##*/}" -batch - 2>&1
	)
	[ -n "$out" ]
	printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"interface":0,"address":"%s/24","gateway":"10.244.1.1"}]}\n' \
		"$CNI_IFNAME" "$CNI_NETNS" "$addr"
	;;
DEL)
	"$IP" -n "${CNI_NETNS##*/}" -batch - 2>/dev/null <<EOF || :
link del dev $CNI_IFNAME
link set dev lo down
EOF
	;;
VERSION) printf '{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\n' ;;
*) ;;
esac
