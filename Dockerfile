# syntax=docker/dockerfile:1
# The weir image: the `weir` binary, the guests, and the schemas and migrations the charts'
# Jobs use.
#
#   docker build -t weir:0.1.0 .
#
# Layout (the charts rely on it, see charts/README.md): /usr/local/bin/weir,
# /opt/weir/guests/*.wasm, /opt/weir/schemas/*.avsc, /opt/weir/schemas/postgres/*.sql;
# user and group 10001; nothing written outside mounted volumes.

ARG RUST_VERSION=1.95

# ---- build: the host (with its bundled librdkafka) and the guests (wasm32-wasip2): passthrough,
# tickers (the asset-class pipelines) and options (the options pipeline) ----
FROM rust:${RUST_VERSION}-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY host host
COPY tests tests
COPY wit wit
COPY guests guests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir \
 && install -D -m 0755 target/release/weir /out/weir
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/guests/target \
    cd guests \
 && cargo build --release --locked --target wasm32-wasip2 -p passthrough -p tickers -p options \
 && install -d /out/guests \
 && install -m 0644 target/wasm32-wasip2/release/passthrough.wasm \
      target/wasm32-wasip2/release/tickers.wasm \
      target/wasm32-wasip2/release/options.wasm /out/guests/

# ---- runtime: Debian slim (glibc, zlib, OpenSSL for librdkafka's TLS, CA certificates), non-root ----
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 weir \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin weir
COPY --from=build /out/weir /usr/local/bin/weir
COPY --from=build /out/guests /opt/weir/guests
COPY schemas /opt/weir/schemas
USER 10001:10001
WORKDIR /opt/weir
# weir run's metrics and probes, and its admin API when configured.
EXPOSE 9464 9465
ENTRYPOINT ["weir"]
CMD ["run", "--config", "/etc/weir/weir.yaml"]
