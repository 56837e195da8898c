# gatecache as a container (an IoT Edge module, or plain Docker/moby).
# Multi-stage: the build stage compiles, the runtime image carries the binary, the CA roots for
# https origins, and nothing else. CI runs this file's `cargo build` line as it is
# (.ci/package), since no Docker engine runs there.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/cache/gatecache gatecache \
    && mkdir -p /var/cache/gatecache/1 \
    && chown -R gatecache:gatecache /var/cache/gatecache
COPY --from=build /src/target/release/gatecache /usr/local/bin/gatecache
USER gatecache
WORKDIR /var/cache/gatecache
# The original module's variables work as they are: STORAGE_<N>_SIZE_GB makes drive N
# /var/cache/gatecache/N (bind a host directory there, owned by uid 10001). Without any, the cache
# is 2 GiB in /var/cache/gatecache/gatecache-cache. Inside, the cache listens on 8081 like the
# original (host 80 -> 8081).
ENV GATECACHE_STORAGE_ROOT=/var/cache/gatecache \
    RUST_LOG=info
VOLUME /var/cache/gatecache
EXPOSE 8081
# No curl in the image: the binary asks its own admin listener (127.0.0.1:9180).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/gatecache", "healthcheck"]
# Without io_uring in the seccomp profile (Docker's default) the epoll backend runs and the
# log says so; deploy/seccomp/gatecache.json allows it.
ENTRYPOINT ["/usr/local/bin/gatecache"]
CMD ["serve", "--listen", "0.0.0.0:8081"]
