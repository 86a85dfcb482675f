# syntax=docker/dockerfile:1
# One image per service, built from one shared stage (they run the same `imagegen` command):
#   docker build --target billing   -t imagegen-billing .
#   docker build --target generator -t imagegen-generator .
#   docker build --target gateway   -t imagegen-gateway .
# The images run as a non-root user, write only to /tmp (mount a tmpfs or an emptyDir there) and work
# with a read-only root filesystem. Keep the uv version in step with UV_VERSION in the Makefile
# (`make deploy-check` fails when they differ).

ARG PYTHON_IMAGE=python:3.11-slim-trixie

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
# Compile bytecode now (the running containers never write .pyc files), copy rather than hard-link out
# of the cache mount, use the image's Python, never the network's, and install into /app/.venv.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Third-party dependencies first, from the lock file alone: this layer is rebuilt only when uv.lock
# or a pyproject.toml changes, not on every change of the code. `--package imagegen` is the root
# package (the `imagegen` command) and everything it needs: all three services, not the test fixtures.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-workspace --package imagegen

# Then our own packages, installed as wheels (not editable) so that the runtime stage needs only the
# virtual environment, not the source tree.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package imagegen

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 imagegen \
    && useradd --system --uid 10001 --gid imagegen --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin imagegen
# Owned by root and not writable by the service user: the code cannot be changed at run time.
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    IMAGEGEN_LOG_FORMAT=json \
    IMAGEGEN_DATA_DIR=/tmp/imagegen
WORKDIR /tmp
USER 10001:10001
# Exec form: the Python process gets SIGTERM itself and drains (compose adds an init with `init: true`).
ENTRYPOINT ["imagegen"]

# ---------------------------------------------------------------------------------------------------
FROM runtime AS billing
ENV IMAGEGEN_BILLING_LISTEN=0.0.0.0:50051 \
    IMAGEGEN_BILLING_OPS_LISTEN=0.0.0.0:9101
EXPOSE 50051 9101
# Healthy = gRPC health SERVING, i.e. the database is reachable (what the gateway waits for).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
CMD ["billing"]

FROM runtime AS generator
ENV IMAGEGEN_GENERATOR_OPS_LISTEN=0.0.0.0:9102
EXPOSE 9102
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=4)"]
CMD ["generator"]

FROM runtime AS gateway
ENV IMAGEGEN_GATEWAY_LISTEN=0.0.0.0:8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gateway"]
