# syntax=docker/dockerfile:1
# order-timeout: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t order-timeout .
#   docker run --rm -e DATABASE_URL=... -e AMQP_URL=... -p 8080:8080 order-timeout

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Everything the build reads, and nothing else (no target/ from the host). The migrations
# and openapi.yaml are compiled into the binary; the manifest names tests/api/main.rs
# and the bench/ and loadgen/ workspace members (without loadgen/ cargo cannot load the
# workspace: "failed to load manifest for dependency `loadgen`").
COPY Cargo.toml Cargo.lock build.rs openapi.yaml ./
COPY migrations ./migrations
COPY src ./src
COPY tests ./tests
COPY bench ./bench
COPY loadgen ./loadgen
# Cache the registry and the target directory between builds (BuildKit); the binary is
# copied out because a cache mount does not end up in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin order-timeout \
    && install -D -m 0755 target/release/order-timeout /out/order-timeout

FROM debian:bookworm-slim AS runtime
# The binary needs only glibc (same Debian release as the builder); ca-certificates for
# any https endpoint an operator configures.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /out/order-timeout /usr/local/bin/order-timeout
USER app:app
ENV HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
EXPOSE 8080
# The service handles SIGTERM itself (graceful shutdown), so it can run as PID 1.
# Extra flags go after the image name: `docker run order-timeout --order-timeout 5s`.
ENTRYPOINT ["/usr/local/bin/order-timeout", "serve"]
