# The controller image for users with Docker (or any BuildKit builder):
#
#   docker build -t <your-registry>/tenant-config-controller:0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) --build-arg SOURCE=<repository URL> .
#
# It holds what scripts/image.sh packages without a daemon, in the same layout:
# the release binary, the shared libraries it links, a CA bundle for TLS to
# AWS, and /etc/passwd with the non-root user 65532. No shell, no package
# manager: a distroless-style runtime on `scratch`.
ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Manifests first: the dependency build is cached until Cargo.lock changes.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
RUN cargo build --locked --release --bin tenant-config-controller
# The runtime file system: the binary, each library at the path the loader
# expects (as ldd lists them), the CA bundle, the users.
RUN set -eu; \
    mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/home/nonroot; \
    cp target/release/tenant-config-controller /rootfs/tenant-config-controller; \
    for lib in $(ldd target/release/tenant-config-controller | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do \
      mkdir -p "/rootfs$(dirname "$lib")"; cp -L "$lib" "/rootfs$lib"; \
    done; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/rootfs/etc/passwd; \
    printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group; \
    chmod 1777 /rootfs/tmp

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="tenant-config-controller" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/tenant-config-controller"]
CMD ["run"]
