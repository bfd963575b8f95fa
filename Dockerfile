# syntax=docker/dockerfile:1
#
# keyguard: Envoy ext_authz server for an OpenAI/Anthropic-compatible LLM API.
#
#   docker build -t keyguard:0.1.0 .
#   docker run --rm -e KEYGUARD_REDIS_URL=redis://redis:6379/0 -p 9001:9001 -p 9090:9090 keyguard:0.1.0
#
# The generated protobuf code is committed under src/keyguard/_proto, so the
# build needs no protoc; every runtime dependency ships manylinux wheels, so it
# needs no compiler and no apt packages either.

# --- builder: a self-contained virtualenv with keyguard and its dependencies ---
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/keyguard
ENV PATH=/opt/keyguard/bin:$PATH

WORKDIR /build
# README.md is the project's `readme`: setuptools needs it to build the wheel.
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (non-editable) install: the venv holds everything, /build is not needed.
RUN pip install --no-cache-dir .

# --- runtime: the same base image (the venv's python symlink points into it) ---
FROM python:3.11-slim-bookworm

# A named account for the numeric uid, so tools that look the user up find one.
RUN groupadd --system --gid 10001 keyguard \
    && useradd --system --uid 10001 --gid 10001 --no-log-init \
       --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin keyguard

COPY --from=builder /opt/keyguard /opt/keyguard

# Bytecode was compiled at install time; the root filesystem may be read-only.
ENV PATH=/opt/keyguard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KEYGUARD_LISTEN=0.0.0.0:9001

USER 10001:10001

# 9001: gRPC (ext_authz Check and grpc.health.v1); 9090: Prometheus /metrics.
EXPOSE 9001 9090

# grpc.health.v1 over the default listener: exit 0 only when SERVING, which
# keyguard reports once Redis answers and no longer after SIGTERM. (Kubernetes
# ignores HEALTHCHECK; the manifests in deploy/kubernetes carry their own probes.)
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["keyguard", "health", "--target", "127.0.0.1:9001"]

ENTRYPOINT ["keyguard"]
CMD ["serve"]
