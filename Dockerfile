# syntax=docker/dockerfile:1
# fastgate: multi-stage build, slim non-root runtime.
#   docker build -t fastgate .
#   docker run -p 8080:8080 -v "$PWD/config/fastgate.toml:/etc/fastgate/fastgate.toml:ro" fastgate
# The same runtime from a binary built on the host (where no Rust image can be pulled; what
# deploy/check builds with buildah):
#   cargo build --release && mkdir -p dist && cp target/release/fastgate dist/
#   docker build --target prebuilt -t fastgate .

FROM rust:1.95-slim-bookworm AS build
# cmake: pingora builds zlib-ng through flate2.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. vendor/ holds the patched httparse
# that Cargo.toml's [patch.crates-io] points to; derive/ the config schema's derive macro.
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
COPY derive ./derive
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip target/release/fastgate

# The runtime, without its binary: the two stages below add it.
FROM debian:bookworm-slim AS base
RUN groupadd --system --gid 10001 fastgate \
 && useradd --system --uid 10001 --gid fastgate --no-create-home --shell /usr/sbin/nologin fastgate \
 && mkdir -p /etc/fastgate
COPY config/fastgate.toml /etc/fastgate/fastgate.toml
# Numeric, so a pod's runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENV FASTGATE_CONFIG=/etc/fastgate/fastgate.toml \
    FASTGATE_LOG_FORMAT=json
EXPOSE 8080 9090
# The admin listener must be reachable from inside the container (127.0.0.1 is).
HEALTHCHECK --interval=10s --timeout=3s --start-period=2s --retries=3 \
  CMD ["fastgate", "probe", "http://127.0.0.1:9090/healthz"]
# SIGTERM drains in-flight requests (server.shutdown_grace), SIGHUP reloads the mounted config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastgate"]
CMD ["run"]

# A binary built on the host (Debian bookworm's glibc or older), from dist/.
FROM base AS prebuilt
COPY dist/fastgate /usr/local/bin/fastgate

# The default target, last: the binary built in the build stage.
FROM base AS runtime
COPY --from=build /src/target/release/fastgate /usr/local/bin/fastgate
