# syntax=docker/dockerfile:1
#
# One image for every process of the platform: speed-layer, batch-layer, serving-layer and the
# demo event-generator. docker-compose.yml runs each of them with its own command.

ARG RUST_VERSION=1.94

# ---- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS builder

# rdkafka builds a bundled librdkafka with ./configure + make (C and C++), linked against zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential make g++ pkg-config zlib1g-dev libssl-dev python3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The whole workspace: its manifest and lock file, every member, and migrations/, which
# sqlx::migrate! embeds into the binaries at compile time.
COPY Cargo.toml Cargo.lock ./
COPY shared-schema shared-schema
COPY shared-io shared-io
COPY speed-layer speed-layer
COPY batch-layer batch-layer
COPY serving-layer serving-layer
COPY cdc-publisher cdc-publisher
COPY tests tests
COPY bench bench
COPY test-postgres test-postgres
COPY migrations migrations
COPY config config

# The cache mounts keep the registry and target/ between builds; the binaries are copied out
# of the cached target/ within the same step. Every member must be here for cargo to read the
# workspace, but only the shipped binaries are built (not the benchmark).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p speed-layer -p batch-layer -p serving-layer -p cdc-publisher -p platform-tests \
    && mkdir -p /out \
    && cp target/release/speed-layer \
          target/release/batch-layer \
          target/release/serving-layer \
          target/release/cdc-publisher \
          target/release/event-generator \
          /out/

# ---- run --------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/platform platform \
    && mkdir -p /data/lake \
    && chown -R platform:platform /data

COPY --from=builder /out/speed-layer /out/batch-layer /out/serving-layer /out/cdc-publisher /out/event-generator /usr/local/bin/

USER platform
WORKDIR /home/platform
ENV LAKE_DIR=/data/lake \
    RUST_LOG=info

# Each service in docker-compose.yml gives its own command, e.g. `speed-layer run`.
CMD ["serving-layer", "run"]
