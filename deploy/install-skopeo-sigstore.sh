#!/bin/sh
# Installs Debian trixie's skopeo (1.18, containers/image 5.34) under a
# private root, the oracle of the sigstore signature tests: bookworm's
# skopeo 1.9 is built with sigstore disabled ("Debian-local change:
# sigstore disabled") and neither signs nor verifies sigstore signatures.
# trixie's binary needs glibc 2.38, so it runs with trixie's own loader and
# libraries from the same root; nothing outside the root is touched.
# The wrapper is $ROOT/skopeo; a root that already answers is kept.
set -eu

ROOT=${IMAGED_SKOPEO_ROOT:-/opt/imaged-test/skopeo-trixie}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES="skopeo libc6 libgpgme11t64 libassuan9 libgpg-error0 libsqlite3-0"

if [ -x "$ROOT/skopeo" ] && "$ROOT/skopeo" --version >/dev/null 2>&1; then
    exit 0
fi
[ "$(uname -m)" = x86_64 ] || { echo "trixie's skopeo: x86_64 only" >&2; exit 1; }
echo "installing: skopeo 1.18 (Debian trixie) under $ROOT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsS --retry 3 -o "$work/Packages.xz" "$MIRROR/dists/trixie/main/binary-amd64/Packages.xz"
# The pool path of each package, from the index (versions move).
python3 - "$work/Packages.xz" $PACKAGES >"$work/files" <<'PY'
import lzma, sys
wanted = set(sys.argv[2:])
found = {}
for stanza in lzma.open(sys.argv[1], "rt").read().split("\n\n"):
    fields = dict(l.split(": ", 1) for l in stanza.splitlines() if ": " in l and not l.startswith(" "))
    if fields.get("Package") in wanted and fields.get("Architecture") in ("amd64", "all"):
        found[fields["Package"]] = fields["Filename"]
missing = wanted - set(found)
if missing:
    sys.exit("not in trixie's index: " + " ".join(sorted(missing)))
print("\n".join(found.values()))
PY
rm -rf "$ROOT.new"
mkdir -p "$ROOT.new/root"
while read -r file; do
    curl -fsS --retry 3 -o "$work/package.deb" "$MIRROR/$file"
    dpkg-deb -x "$work/package.deb" "$ROOT.new/root"
done <"$work/files"
cat >"$ROOT.new/skopeo" <<WRAP
#!/bin/sh
lib=$ROOT/root/usr/lib/x86_64-linux-gnu
exec "\$lib/ld-linux-x86-64.so.2" --library-path "\$lib" "$ROOT/root/usr/bin/skopeo" "\$@"
WRAP
chmod 755 "$ROOT.new/skopeo"
rm -rf "$ROOT"
mv "$ROOT.new" "$ROOT"
"$ROOT/skopeo" --version
