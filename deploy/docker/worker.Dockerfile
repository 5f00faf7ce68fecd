# An rfleet worker: `rfleet worker` takes scoring requests from the message bus and runs
# them in `rfleet-rhost` children, each an embedded R from Debian's r-base-core. tini is
# PID 1: it forwards SIGTERM to rfleet (which drains: hands unstarted requests back to the
# broker, finishes the ones in R, exits 0) and reaps any process R leaves behind.
#
# Model images build FROM this one (see `rfleet package`):
#   FROM rfleet-worker:0.1.0
#   USER root
#   RUN apt-get update && apt-get install -y --no-install-recommends r-cran-xgboost && rm -rf /var/lib/apt/lists/*
#   COPY --chown=10001:10001 models/ /models/
#   USER 10001:10001
# or mount a models volume at /models instead.
#
# Build context: the repository root, with `rfleet` and `rfleet-rhost` built beforehand
# (`cargo build --profile image -p rfleet -p rhost`):
#   docker build -f deploy/docker/worker.Dockerfile -t rfleet-worker:0.1.0 .

FROM debian:bookworm-slim
# Where the prebuilt binaries are, relative to the context (tests use target/debug).
ARG BIN_DIR=target/image
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# R and the model packages rfleet's own set-up installs (deploy/setup.sh), all from Debian,
# so R and every package agree on one ABI. Debian's versions of the day: pinning them
# would break the build at the next security update (hence DL3008). The user is numeric
# 10001, with no home or login shell.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        tini r-base-core r-cran-jsonlite r-cran-randomforest r-cran-ranger \
        r-cran-gbm r-cran-glmnet r-cran-caret r-cran-e1071 r-cran-rpart r-cran-mass \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rfleet \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin rfleet \
    && mkdir -p /models \
    && chown 10001:10001 /models
COPY ${BIN_DIR}/rfleet ${BIN_DIR}/rfleet-rhost /usr/local/bin/
# The R host links Debian's libR: a binary built against some other R stops the build here.
# grep reads all of ldd's output (no -q): an early exit can fail ldd on a closed pipe,
# and pipefail with it.
RUN ldd /usr/local/bin/rfleet-rhost | grep 'libR.so => /' >/dev/null \
    && /usr/local/bin/rfleet --version
ENV RFLEET_MODELS__DIR=/models
# Last, so that a new revision or date rebuilds no layer above (build-args are part of the
# cache key of every later RUN).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="rfleet-worker" \
      org.opencontainers.image.description="rfleet's worker: scores R models in embedded R hosts, taking requests from a message bus" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
USER 10001:10001
# A worker serves no HTTP; Kubernetes watches the process (and KEDA the queue depth).
HEALTHCHECK NONE
ENTRYPOINT ["/usr/bin/tini", "--", "rfleet"]
CMD ["worker"]
