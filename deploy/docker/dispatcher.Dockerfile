# The rfleet dispatcher: HTTP in, requests onto the message bus, answers back. No R at all
# (only the R host links R, and it runs in the worker image), and no shell or package
# manager at run time: the final stage is `scratch` holding the binary, the shared libraries
# it links (found with ldd), and passwd/group entries for user 10001. A shell-less image
# gives an intruder no tools, has no OS packages for scanners to flag, and is a few
# megabytes beside the binary. No CA certificates: rfleet's TLS clients (the broker's
# amqps://, an OIDC issuer's JWKS) trust Mozilla's roots compiled into the binary
# (webpki-roots), and a private CA is a mounted file (`bus.ca_file`). No time zone data:
# rfleet logs in UTC.
#
# Build context: the repository root, with `rfleet` built beforehand (no Rust toolchain in
# the image; `cargo build --profile image -p rfleet`):
#   docker build -f deploy/docker/dispatcher.Dockerfile -t rfleet-dispatcher:0.1.0 .
# deploy/docker/build.sh does this for both images; deploy/docker/README.md says more.

# Where the prebuilt binaries are, relative to the context (tests use target/debug).
ARG BIN_DIR=target/image

FROM debian:bookworm-slim AS files
ARG BIN_DIR
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY ${BIN_DIR}/rfleet /out/usr/local/bin/rfleet
# Everything the binary's loader needs, at the paths ldd found them (the ELF interpreter
# too), so the scratch stage runs it exactly as Debian does. No ld.so.cache is needed:
# glibc searches /lib/x86_64-linux-gnu by default. An absent library fails the build here.
RUN ldd /out/usr/local/bin/rfleet \
    | awk '/=> \// { print $3 } /^\t\// { print $1 }' \
    | xargs -r -I{} cp --parents -L {} /out \
    && test -e /out/lib64/ld-linux-x86-64.so.2 \
    && mkdir -p /out/etc /out/tmp \
    && chmod 1777 /out/tmp \
    && echo 'rfleet:x:10001:10001:rfleet:/nonexistent:/sbin/nologin' >/out/etc/passwd \
    && echo 'rfleet:x:10001:' >/out/etc/group \
    && echo 'hosts: files dns' >/out/etc/nsswitch.conf \
    && chroot /out /usr/local/bin/rfleet --version

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="rfleet-dispatcher" \
      org.opencontainers.image.description="rfleet's HTTP dispatcher: scores R models through workers on a message bus (no R inside)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="scratch"
COPY --from=files /out/ /
ENV RFLEET_SERVER__LISTEN=0.0.0.0:8000
USER 10001:10001
EXPOSE 8000
# The dispatcher answers GET /live and /ready itself; Kubernetes probes them over HTTP (Docker's
# HEALTHCHECK would need a client binary in the image, and Kubernetes ignores it).
HEALTHCHECK NONE
# Exec form: rfleet is PID 1 and gets SIGTERM itself, drains in-flight requests (bounded by
# server.drain_timeout_ms) and exits 0. It starts no children, so it needs no init.
ENTRYPOINT ["/usr/local/bin/rfleet", "dispatcher"]
