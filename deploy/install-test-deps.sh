#!/bin/sh
# Installs what the end-to-end tests need when it is missing:
# Debian's docker-registry (the CNCF Distribution registry), and protoc,
# which the upstream CRI client crate (k8s-cri, a test dependency that
# proves wire compatibility) needs to build.
set -eu

need=""
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"

[ -z "$need" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    sudo=sudo
else
    sudo=
fi
echo "installing:$need"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
$sudo apt-get install -y --no-install-recommends $need \
    || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends $need; }
