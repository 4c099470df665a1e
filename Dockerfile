# syntax=docker/dockerfile:1.7
#
# One image for every shopmesh component:
#   docker build -t shopmesh .
#   docker run shopmesh serve catalog | migrate catalog | list
#
# Build stage: the whole workspace is compiled once (BuildKit cache mounts keep
# the cargo registry and target/ between builds, so only changed crates
# rebuild). librdkafka is compiled from source by rdkafka-sys; zlib is linked
# statically so the runtime image needs nothing beyond glibc/libgcc/libstdc++.

ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS builder

RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*

ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    LIBZ_SYS_STATIC=1

WORKDIR /src
COPY . .

RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin shopmesh \
 && install -D -m 0755 target/release/shopmesh /out/shopmesh

# Fail the build if the binary needs a shared library the distroless cc image
# does not ship (it has glibc, libgcc_s, libstdc++, libssl3/libcrypto3).
RUN unexpected="$(ldd /out/shopmesh \
      | grep -vE 'linux-vdso|ld-linux|lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+|ssl|crypto)\.so' || true)"; \
    if [ -n "$unexpected" ]; then echo "unexpected shared libraries:"; echo "$unexpected"; exit 1; fi; \
    /out/shopmesh --version

# Runtime: distroless, no shell, non-root (uid/gid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="shopmesh" \
      org.opencontainers.image.description="shopmesh e-commerce service mesh: gateway and gRPC services in one binary" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/shopmesh /usr/local/bin/shopmesh

USER 65532:65532
# gRPC, ops HTTP (/health/*, /metrics), gateway HTTP.
EXPOSE 50051 9090 8080

ENTRYPOINT ["/usr/local/bin/shopmesh"]
CMD ["list"]
