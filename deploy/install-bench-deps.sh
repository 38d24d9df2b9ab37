#!/bin/sh
# Installs what `make bench` compares against when it is missing:
# Debian's containerd (1.6), whose CRI pull is the baseline for imaged's.
set -eu

command -v containerd >/dev/null 2>&1 && exit 0

if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
else
    sudo=
fi
echo "installing: containerd"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends containerd \
    || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends containerd; }
