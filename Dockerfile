# dynakv container image.
#
#   docker build -t dynakv .        # or: docker compose build / docker compose up
#
# compiles dynakv in the official Rust image and copies the stripped binary into
# debian:bookworm-slim: a non-root user, data on the /data volume, port 8080, a
# health check on /health/ready and a graceful stop on SIGTERM.
#
# Where no registry can be reached (no rust or debian image to pull),
# docker/build-images.sh builds the same image from what the machine has: a
# Debian bookworm root filesystem made with mmdebstrap and imported as
# debian:bookworm-slim, plus the `prebuilt` target below with a binary built on
# the host. See "Containers" in README.md.
#
# Stages, in this order on purpose: the legacy builder (no BuildKit) runs every
# stage up to the --target, so `--target prebuilt` never needs the rust image,
# and the default target (`runtime`, the last stage) never uses `prebuilt`.

ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-slim-bookworm

# ---------------------------------------------------------------------------
# base: the runtime filesystem without the binary.
FROM ${DEBIAN_IMAGE} AS base
# A fixed numeric uid/gid, so Kubernetes can check runAsNonRoot and fsGroup can
# match. /data is created owned by it: a new named volume mounted there copies
# that ownership, so the non-root node can write to it.
RUN groupadd --system --gid 10001 dynakv \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin dynakv \
 && mkdir -p /data \
 && chown 10001:10001 /data \
 && chmod 0750 /data
# dynakv-healthcheck: GET on the local node (bash /dev/tcp: there is no curl
# here, see the script). dynakv-leave: POST /cluster/leave on the local node.
COPY docker/dynakv-healthcheck docker/dynakv-leave /usr/local/bin/
# Listen on every interface of the container; keep the data on the volume.
# Everything else (node id, advertise URL, seeds, secret, timers) comes from
# DYNAKV_* variables or flags at run time; `docker run IMAGE --help` lists them.
# NO_COLOR: plain log lines for log drivers (dynakv colours them otherwise).
ENV DYNAKV_LISTEN=0.0.0.0:8080 \
    DYNAKV_DATA_DIR=/data \
    NO_COLOR=1
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001
# On SIGTERM dynakv stops accepting, finishes in-flight requests (up to 10 s),
# stops its loops and flushes sled, then exits 0: give it `docker stop -t 30`
# (compose: stop_grace_period 30s) so a stop never loses an acknowledged write.
STOPSIGNAL SIGTERM
# Ready = serving, knows the cluster, holds every partition it owns. The start
# period covers joining and receiving partitions; failures in it do not count.
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["dynakv-healthcheck", "/health/ready"]
# dynakv is PID 1 and handles SIGTERM/SIGINT itself; it starts no children.
ENTRYPOINT ["dynakv"]

# ---------------------------------------------------------------------------
# prebuilt: base + a binary built on the host (same Debian release, so the same
# glibc). docker/build-images.sh puts it at prebuilt/dynakv in a small build
# context of its own. The wildcard lets the legacy builder pass this stage on a
# default build, where the file does not exist (BuildKit skips the stage).
FROM base AS prebuilt
COPY docker/dynakv-healthcheck prebuilt/dynak[v] /usr/local/bin/

# ---------------------------------------------------------------------------
# build: compile the release binary.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The image needs no debug info (Cargo.toml keeps line tables for profiling on
# the host): without it and with symbols stripped the binary is ~7 MB, not ~55.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --bin dynakv \
 && install -m 0755 target/release/dynakv /usr/local/bin/dynakv \
 && /usr/local/bin/dynakv --version

# ---------------------------------------------------------------------------
# runtime (default): base + the compiled binary.
FROM base AS runtime
COPY --from=build /usr/local/bin/dynakv /usr/local/bin/dynakv
