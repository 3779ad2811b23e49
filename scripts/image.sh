#!/usr/bin/env bash
# Builds the controller's container image without a Docker daemon: the binary,
# the shared libraries it links (as `ldd` lists them), a CA bundle (the AWS SDK
# needs it for TLS to AWS), /etc/passwd with the non-root user 65532, as one
# reproducible layer in an OCI image archive (`docker load`, `ctr images
# import`, `skopeo copy oci-archive:` read it). Users with Docker build the
# same image from the Dockerfile.
#
#   scripts/image.sh [--profile release|dev] [--out FILE] [--check-reproducible]
#
# --profile dev packages the binary the test suite already built (one build
# profile for tests); release (the default) is what users run.
# --check-reproducible packages twice and fails unless both digests agree.
# Prints the image reference, digest and size as the last line (JSON).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

profile=release out="" check=false
while [[ $# -gt 0 ]]; do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --check-reproducible) check=true; shift ;;
    *) echo "usage: $0 [--profile release|dev] [--out FILE] [--check-reproducible]" >&2; exit 2 ;;
  esac
done
[[ $profile == release || $profile == dev ]] || { echo "--profile is release or dev" >&2; exit 2; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# Where the source lives, for the image's label: IMAGE_SOURCE, else the git remote.
source_url=${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo unknown)}
name=docker.io/library/tenant-config-controller:$version
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
out=${out:-$target_dir/image/tenant-config-controller-$version.tar}
mkdir -p "$(dirname "$out")"

if [[ $profile == release ]]; then
  cargo build --locked --release --bin tenant-config-controller >&2
  binary=$target_dir/release/tenant-config-controller
else
  cargo build --locked --bin tenant-config-controller >&2
  binary=$target_dir/debug/tenant-config-controller
fi
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca_bundle ]] || { echo "no CA bundle at $ca_bundle (Debian package ca-certificates)" >&2; exit 1; }

# Each library at the path the dynamic loader looks for it.
libs=()
while read -r lib; do
  libs+=(--file "$(readlink -f "$lib"):$lib")
done < <(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')

package() {
  python3 "$ROOT/scripts/oci_image.py" --name "$name" --out "$1" \
    --file "$binary:/tenant-config-controller" "${libs[@]}" \
    --file "$ca_bundle:/etc/ssl/certs/ca-certificates.crt" \
    --text '/etc/passwd:root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    --text '/etc/group:root:x:0:\nnonroot:x:65532:\n' \
    --dir /tmp:1777 --dir /home/nonroot:755 \
    --entrypoint /tenant-config-controller --cmd run --user 65532:65532 \
    --env PATH=/ --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label "org.opencontainers.image.source=$source_url" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --label "org.opencontainers.image.title=tenant-config-controller"
}

result=$(package "$out")
if $check; then
  again=$(package "$out.again")
  rm -f "$out.again"
  digest() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])["digest"])' "$1"; }
  [[ $(digest "$result") == $(digest "$again") ]] || { echo "not reproducible: $result vs $again" >&2; exit 1; }
  echo "reproducible: two packagings give $(digest "$result")" >&2
fi
size=$(stat -c %s "$out")
echo "image $name ($profile binary): $((size / 1024 / 1024)) MiB archive at $out" >&2
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["archive_bytes"]=int(sys.argv[2]); print(json.dumps(r))' "$result" "$size"
