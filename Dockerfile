# topgun-node container image: multi-stage, runs as a non-root user, health-checked on /health.
#
#   docker build -t topgun-node .
#   docker run -p 8080:8080 -e JWT_SECRET=change-me topgun-node
#
# config/docker-compose.yml runs three of these with Prometheus, Grafana and Loki.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo "fn main() {}" > src/main.rs \
    && echo "" > src/lib.rs \
    && echo "fn main() {}" > benches/codec.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin topgun-node

FROM debian:bookworm-slim
# ca-certificates for an RS256 key fetched by an entrypoint, if any (no curl: the HEALTHCHECK
# is the binary's own `healthcheck`). Unpinned on purpose: bookworm's security updates replace
# exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 topgun \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/topgun --create-home topgun
COPY --from=build /src/target/release/topgun-node /usr/local/bin/topgun-node
COPY config/topgun.toml /etc/topgun/topgun.toml
USER 10001:10001
WORKDIR /var/lib/topgun
# Listen on every interface inside the container (the node only binds loopback while
# authentication is off unless told otherwise: set JWT_SECRET, or TOPGUN_NO_AUTH=1 for a demo).
ENV PORT=8080 \
    TOPGUN_BIND_ADDR=0.0.0.0 \
    TOPGUN_DATA_DIR=/var/lib/topgun/data \
    LOG_LEVEL=info
VOLUME ["/var/lib/topgun/data"]
# 9080: cluster port, TCP (node-to-node transport) and UDP (SWIM membership).
EXPOSE 8080 9080 9080/udp
# /health answers 200 while the process serves HTTP (use /ready for "storage open, joined").
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/topgun-node", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/topgun-node"]
