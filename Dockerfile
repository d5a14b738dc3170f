# tailvoy image: the compiled binary plus an Envoy binary on distroless, running as non-root.
# Build (needs internet: deno compile downloads the Deno runtime for the target):
#   docker build -t tailvoy .
# Run beside tailscaled, sharing its socket:
#   docker run -v /var/run/tailscale:/var/run/tailscale -v $PWD/config.yaml:/etc/tailvoy/config.yaml tailvoy
# Envoy Gateway data plane: the ENTRYPOINT takes tailvoy's flags, then `--` and Envoy's own arguments:
#   tailvoy --config /etc/tailvoy/config.yaml --authz-addr 0.0.0.0:9001 -- <envoy args>

ARG DENO_VERSION=2.9.6
ARG ENVOY_VERSION=v1.40.0

FROM denoland/deno:${DENO_VERSION} AS build
ARG TARGETARCH
WORKDIR /src
COPY deno.json deno.lock ./
COPY main.ts ./
COPY lib ./lib
COPY proto ./proto
COPY scripts ./scripts
RUN case "${TARGETARCH:-amd64}" in \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
 && deno task compile "$target" \
 && cp "dist/tailvoy-$target" /tailvoy

FROM envoyproxy/envoy:${ENVOY_VERSION} AS envoy

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tailvoy /usr/local/bin/tailvoy
COPY --from=envoy /usr/local/bin/envoy /usr/local/bin/envoy
USER nonroot:nonroot
EXPOSE 9001 9002
ENTRYPOINT ["/usr/local/bin/tailvoy"]
CMD ["--config", "/etc/tailvoy/config.yaml"]
