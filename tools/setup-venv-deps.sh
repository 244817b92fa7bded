#!/bin/sh
# Debian's python3 ships venv separately; install it when root and missing.
set -eu
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq python3-venv >/dev/null
else
	echo "python3 -m venv failed; install python3-venv" >&2
	exit 1
fi
