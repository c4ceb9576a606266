# syntax=docker/dockerfile:1
# The sessionview binary on a slim runtime image.
#   docker build -t sessionview .
#   docker run --rm sessionview --help
# One image runs every role (migrate, project, serve, replay, ...): the command picks it.

# GraphiQL's browser assets: npm registry packages pinned in scripts/tools/web-assets.lock, checked
# against their sha512 and embedded by the build (the binary serves them; nothing at run time).
FROM node:20-bookworm AS web-assets
WORKDIR /src
COPY scripts/tools/web-assets scripts/tools/web-assets.lock scripts/tools/
RUN scripts/tools/web-assets /web-assets

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=web-assets /web-assets /web-assets
ENV SESSIONVIEW_WEB_ASSETS=/web-assets
# librdkafka is built from source by rdkafka-sys (make, gcc, zlib from the full rust image).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sessionview \
    && cp target/release/sessionview /usr/local/bin/sessionview

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sessionview --create-home sessionview
COPY --from=build /usr/local/bin/sessionview /usr/local/bin/sessionview
USER 10001:10001
WORKDIR /var/lib/sessionview
ENV SESSIONVIEW_LOG_FORMAT=json
# 8080: serve (API, /metrics, /healthz, /readyz); 9464: project --metrics-listen.
EXPOSE 8080 9464
# `healthcheck` asks SESSIONVIEW_HEALTHCHECK_URL (default http://127.0.0.1:9464/healthz, the
# projector's probe); set it to http://127.0.0.1:8080/healthz for `serve`.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sessionview", "healthcheck"]
ENTRYPOINT ["sessionview"]
CMD ["--help"]
