# syntax=docker/dockerfile:1
#
# One image for every Axon role; the command picks the role:
#
#   docker build -t axon .
#   docker run -e REDIS_URL=redis://redis:6379/0 -p 8000:8000 axon     # `axon serve` (the default)
#   docker run -e REDIS_URL=redis://redis:6379/0 axon worker --concurrency 20
#   docker run -e REDIS_URL=redis://redis:6379/0 axon compactor
#   docker run -v axon-keys:/var/lib/axon/keys axon keys receipt-init --origin axon.example/prod
#
# The image's HEALTHCHECK probes the API's /healthz. Workers and compactors serve
# no HTTP API, so docker-compose.yml overrides it for them (see the comments
# there and docs/operations.md). Everything runs as the unprivileged user
# `axon` (uid 10001); state lives under /var/lib/axon (AXON_DATA_DIR), where the
# archive (archive/) and the receipt signing key (keys/receipt.key) are meant to
# be volumes.

ARG PYTHON_IMAGE=python:3.11-slim

# -- build: the axon wheel, installed with its dependencies into a venv -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY axon ./axon

# Build the wheel (hatchling, in pip's isolated build environment), then install
# it into /opt/axon. Every dependency ships binary wheels for CPython 3.11 on
# glibc, so no compiler is needed; the final stage copies the venv alone, which
# leaves the sources, the wheel and the build tools behind.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/axon \
 && /opt/axon/bin/python -m pip install /wheels/*.whl \
 && /opt/axon/bin/axon --version

# -- runtime -------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="axon" \
      org.opencontainers.image.description="Durable background tasks for AI agents, on Redis Streams" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 axon \
 && useradd --system --uid 10001 --gid axon --no-create-home \
        --home-dir /var/lib/axon --shell /usr/sbin/nologin axon \
 && install -d -o axon -g axon -m 0750 /var/lib/axon /var/lib/axon/archive \
 && install -d -o axon -g axon -m 0700 /var/lib/axon/keys

# Same base image and path as the build stage, so the venv's interpreter links hold.
COPY --from=build /opt/axon /opt/axon
COPY deploy/healthcheck.py /opt/axon/healthcheck.py

ENV PATH=/opt/axon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AXON_API_HOST=0.0.0.0 \
    AXON_API_PORT=8000 \
    AXON_DATA_DIR=/var/lib/axon \
    AXON_RECEIPT_KEY_FILE=/var/lib/axon/keys/receipt.key

WORKDIR /var/lib/axon
USER 10001:10001
EXPOSE 8000

# Liveness of the API process (/readyz also checks Redis: use it for load balancers).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "/opt/axon/healthcheck.py", "/healthz"]

ENTRYPOINT ["axon"]
CMD ["serve"]
