# syntax=docker/dockerfile:1.7
#
# Usher's two images, from one build of the workspace:
#
#   docker build --target balancer   -t ghcr.io/usher-lb/usher-balancer:0.1.0 .
#   docker build --target autoscaler -t ghcr.io/usher-lb/usher-autoscaler:0.1.0 .
#
# The builder stage compiles both binaries once (release profile: thin LTO,
# one codegen unit) with BuildKit cache mounts for the cargo registry and the
# target directory, so a rebuild after a source change recompiles only the
# workspace crates. Each runtime stage is distroless (glibc, libgcc, CA
# certificates; no shell, no package manager), runs as the non-root user
# 65532, and writes nothing: it runs with readOnlyRootFilesystem.

ARG RUST_VERSION=1.95
ARG RUNTIME=gcr.io/distroless/cc-debian12:nonroot

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# The workspace manifests and every member (cargo reads them all), nothing
# else; see .dockerignore.
COPY Cargo.toml Cargo.lock ./
COPY balancer ./balancer
COPY autoscaler ./autoscaler
COPY examples ./examples
RUN --mount=type=cache,id=usher-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=usher-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=usher-target,target=/src/target,sharing=locked \
    cargo build --release --locked --package usher-balancer --package usher-autoscaler \
    && mkdir -p /out \
    && cp target/release/usher-balancer target/release/usher-autoscaler /out/

# The balancer: listeners as configured (the chart uses 8080), admin on 9901.
FROM ${RUNTIME} AS balancer
LABEL org.opencontainers.image.title="usher-balancer" \
      org.opencontainers.image.description="Usher's L7 load balancer for learning platforms" \
      org.opencontainers.image.source="https://github.com/usher-lb/usher" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usher-balancer /usr/local/bin/usher-balancer
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/usher-balancer"]
CMD ["run", "--config", "/etc/usher/config/balancer.yaml"]

# The autoscaler: /metrics and /healthz on 9902.
FROM ${RUNTIME} AS autoscaler
LABEL org.opencontainers.image.title="usher-autoscaler" \
      org.opencontainers.image.description="Usher's autoscaling controller for LMS Deployments" \
      org.opencontainers.image.source="https://github.com/usher-lb/usher" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/usher-autoscaler /usr/local/bin/usher-autoscaler
USER 65532:65532
EXPOSE 9902
ENTRYPOINT ["/usr/local/bin/usher-autoscaler"]
CMD ["run"]
