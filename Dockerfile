# levee and its programmable app node, levee-node, in one image.
#
#   docker build -t levee:local .
#   docker run --rm levee:local demo                      # the built-in demo, no config needed
#   docker run --rm -p 8080:8080 -p 9901:9901 \
#     -v "$PWD/config:/etc/levee:ro" levee:local run --config /etc/levee/compose.toml
#
# The image has no config of its own: mount one at /etc/levee/levee.toml (the
# default command) or pass `run --config FILE`. Mount the config's directory,
# not the single file, so levee's file watch sees edits (it watches the
# directory; an editor's rename-into-place never reaches a single-file bind
# mount). docker-compose.yml and deploy/kubernetes/ do this.

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: cargo reads every member's manifest (and the bench and
# test targets they declare), and `levee demo` embeds config/demo.toml.
COPY . .
# levee-node lives in the levee-testkit member, so both packages are named.
RUN cargo build --release --locked -p levee -p levee-testkit --bin levee --bin levee-node \
 && install -D -m 0755 target/release/levee /out/levee \
 && install -D -m 0755 target/release/levee-node /out/levee-node

# --- run ---------------------------------------------------------------------
FROM debian:bookworm-slim
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 levee \
 && useradd --system --uid 10001 --gid levee --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin levee \
 && mkdir -p /etc/levee
COPY --from=build /out/levee /out/levee-node /usr/local/bin/
USER 10001:10001
# The ports of config/compose.toml and deploy/kubernetes: data plane, admin.
EXPOSE 8080 9901
# levee drains on SIGTERM (the default stop signal) for up to shutdown_grace.
ENTRYPOINT ["levee"]
CMD ["run", "--config", "/etc/levee/levee.toml"]
