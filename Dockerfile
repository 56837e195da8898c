# Multi-stage build: the runtime image carries only the binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/gatecache /usr/local/bin/gatecache
RUN useradd --system --home /var/cache/gatecache gatecache \
    && mkdir -p /var/cache/gatecache && chown gatecache /var/cache/gatecache
USER gatecache
WORKDIR /var/cache/gatecache
VOLUME /var/cache/gatecache
ENTRYPOINT ["/usr/local/bin/gatecache"]
CMD ["serve"]
