# syntax=docker/dockerfile:1
#
# omniroute: the production image (docs/deployment.md).
#
#   docker build -t omniroute .
#   docker run --env-file deploy/omniroute.env \
#       -e OMNIROUTE_MONGODB_URI='mongodb://db1,db2,db3/?replicaSet=rs0' -p 8080:8080 omniroute
#
# Two stages: the build stage installs omniroute and its runtime dependencies into a
# virtualenv (no test or dev extras, no embedded store: production runs on a MongoDB
# replica set); the runtime stage is the slim Python image plus that virtualenv, run as
# an unprivileged user. The example configuration is baked in at /etc/omniroute; mount
# your own directory there (read-only) to replace it. Secrets (the env var names listed
# in channels.yaml) come from the environment at run time, never from the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/omniroute
COPY pyproject.toml README.md ./
COPY channels ./channels
COPY ingest ./ingest
COPY routing ./routing
COPY crm_store ./crm_store
COPY inbox ./inbox
COPY config ./config
COPY automation ./automation
# Optional extras, e.g. --build-arg OMNIROUTE_EXTRAS=embedded for a self-contained demo
# image with the embedded store (GPL-2.0-only, see docs/store.md). Empty by default.
ARG OMNIROUTE_EXTRAS=""
RUN /opt/omniroute/bin/pip install --no-cache-dir ".${OMNIROUTE_EXTRAS:+[$OMNIROUTE_EXTRAS]}" \
    && /opt/omniroute/bin/python -m compileall -q /opt/omniroute/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="omniroute" \
      org.opencontainers.image.description="Omnichannel message ingestion and CRM routing" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid/gid, so orchestrators can verify "not root" (runAsNonRoot).
RUN groupadd --system --gid 10001 omniroute \
    && useradd --system --uid 10001 --gid omniroute --no-create-home \
       --home-dir /var/lib/omniroute --shell /usr/sbin/nologin omniroute \
    && install -d -o omniroute -g omniroute -m 0750 /var/lib/omniroute
COPY --from=build /opt/omniroute /opt/omniroute
COPY config/*.yaml /etc/omniroute/
COPY deploy/healthcheck.py /opt/omniroute/healthcheck.py
ENV PATH=/opt/omniroute/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMNIROUTE_HOST=0.0.0.0 \
    OMNIROUTE_PORT=8080 \
    OMNIROUTE_CONFIG_DIR=/etc/omniroute \
    OMNIROUTE_DATA_DIR=/var/lib/omniroute \
    OMNIROUTE_LOG_FORMAT=json
WORKDIR /var/lib/omniroute
USER 10001:10001
EXPOSE 8080
# Liveness: GET /healthz on OMNIROUTE_PORT (readiness, /readyz, is for the proxy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "/opt/omniroute/healthcheck.py"]
# SIGTERM starts the graceful shutdown (drain, finish intake, release leases); give it
# 30 s before the SIGKILL (docker stop -t 30, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["omniroute"]
CMD ["serve"]
