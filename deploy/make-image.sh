#!/bin/sh
# Builds the OCI image of imaged from built binaries, with no base image:
# one layer holding the six binaries (/usr/local/bin), the shared
# libraries `ldd` says they load and the dynamic loader, an /etc/passwd
# for root, and empty /tmp and /var/lib/imaged. Writes an OCI image
# layout (oci-layout, index.json, blobs/sha256/...) and, with --push,
# copies it to a registry with skopeo (`make image-deps` installs it).
# The layer is reproducible: sorted, owned by root, every mtime
# SOURCE_DATE_EPOCH (default 0).
#
#   deploy/make-image.sh --bin-dir target/release --out target/image \
#       [--tag latest] [--push REGISTRY/REPO:TAG]
set -eu

bin_dir=target/release
out=target/image
tag=latest
push=
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --push) push=$2; shift 2 ;;
        *) echo "make-image: unknown argument $1" >&2; exit 2 ;;
    esac
done
binaries="imaged-metadata imaged-transfer imaged-events imaged-gateway imaged-run imagectl"
epoch=${SOURCE_DATE_EPOCH:-0}

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib/imaged"
chmod 1777 "$rootfs/tmp"
for b in $binaries; do
    [ -x "$bin_dir/$b" ] || { echo "make-image: $bin_dir/$b is not built" >&2; exit 1; }
    install -m 0755 "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
done
# The shared libraries and the loader, at the paths the binaries ask for.
for lib in $(for b in $binaries; do ldd "$bin_dir/$b"; done \
        | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' | sort -u); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
printf 'root:x:0:0:root:/root:/usr/local/bin/imaged-run\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\n' > "$rootfs/etc/group"

tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    -C "$rootfs" -cf "$work/layer.tar" .
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar.gz")
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
mv "$work/layer.tar.gz" "$out/blobs/sha256/$layer"

# The config: imaged-run starts all four processes; /var/lib/imaged is
# the root a DaemonSet mounts from the host.
printf '%s' "{\"architecture\":\"$arch\",\"os\":\"linux\",\"created\":\"$created\",\
\"config\":{\"Entrypoint\":[\"/usr/local/bin/imaged-run\"],\
\"Cmd\":[\"--root\",\"/var/lib/imaged\"],\
\"Env\":[\"PATH=/usr/local/bin:/usr/bin:/bin\"],\
\"Labels\":{\"org.opencontainers.image.title\":\"imaged\"}},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\
\"history\":[{\"created\":\"$created\",\"created_by\":\"make image\"}]}" > "$work/config.json"
config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
config_size=$(stat -c %s "$work/config.json")
mv "$work/config.json" "$out/blobs/sha256/$config"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config\",\"size\":$config_size},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer\",\"size\":$layer_size}]}" \
    > "$work/manifest.json"
manifest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
manifest_size=$(stat -c %s "$work/manifest.json")
mv "$work/manifest.json" "$out/blobs/sha256/$manifest"

printf '%s' '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\
\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest\",\"size\":$manifest_size,\
\"annotations\":{\"org.opencontainers.image.ref.name\":\"$tag\"}}]}" > "$out/index.json"
echo "make-image: $out: sha256:$manifest ($layer_size bytes compressed)"

if [ -n "$push" ]; then
    command -v skopeo >/dev/null 2>&1 || {
        echo "make-image: skopeo is needed to push (make image-deps installs it)" >&2
        exit 1
    }
    # Loopback registries are plain HTTP.
    case "$push" in
        localhost[:/]*|127.*) tls=--dest-tls-verify=false ;;
        *) tls= ;;
    esac
    skopeo copy --quiet $tls "oci:$out:$tag" "docker://$push"
    echo "make-image: pushed $push"
fi
