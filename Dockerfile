# regtask images: one Dockerfile, three targets.
#
#   docker build --target operator -t regtask/operator:dev .   # Kopf operator
#   docker build --target shim     -t regtask/shim:dev .       # RPC shim AND runner gateway
#   docker build --target runner   -t regtask/runner:dev .     # task runners (Jobs)
#
# The process is chosen by CONTAINER_TYPE (docker/entrypoint.sh): operator | shim | gateway |
# runner. Dependencies come from uv.lock only (`uv sync --frozen`), one extra per image, so the
# runner image carries no kopf/fastapi/kubernetes. The shim image carries two packages for its
# two processes (regtask_shim, regtask_gateway), which import nothing of each other. Every
# image runs as uid 10001 (the Jobs' runAsUser) and writes nothing outside /tmp, so it runs with
# a read-only root filesystem.
# Checked by hack/lint-dockerfile.sh (hadolint + the project's rules).

# Python 3.11 (the interpreter CI tests with) on Debian 13 slim, pinned by digest (multi-arch
# index). Rebase with --build-arg PYTHON_IMAGE=python:3.11.X-slim-trixie@sha256:...
ARG PYTHON_IMAGE=python:3.11.15-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

# ---------------------------------------------------------------- build: one venv per extra
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./

# Each image: the locked dependencies of one extra (a layer cached until uv.lock changes), then
# only the packages that image runs, on the venv's path through a .pth file (what the editable
# dev install does), byte-compiled now because the root filesystem is read-only at run time.
# The project is not built as a wheel: pyproject's force-include of common/regtask/lua adds
# the Lua files a second time and hatchling refuses that wheel (see docs/PACKAGING.md).
# Last, each build proves its entry modules import.
FROM build AS build-operator
RUN uv sync --frozen --no-dev --extra operator --no-install-project
COPY common/regtask /opt/regtask/regtask
COPY operator/regtask_operator /opt/regtask/regtask_operator
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/regtask \
    && echo /opt/regtask >"$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/regtask.pth" \
    && /opt/venv/bin/python -c 'import regtask_operator.__main__, regtask.docstore'

FROM build AS build-shim
RUN uv sync --frozen --no-dev --extra shim --no-install-project
COPY common/regtask /opt/regtask/regtask
COPY shim/regtask_shim /opt/regtask/regtask_shim
COPY gateway/regtask_gateway /opt/regtask/regtask_gateway
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/regtask \
    && echo /opt/regtask >"$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/regtask.pth" \
    && /opt/venv/bin/python -c 'import regtask_shim.__main__, regtask_gateway.__main__, regtask.docstore'

FROM build AS build-runner
RUN uv sync --frozen --no-dev --extra runners --no-install-project
COPY common/regtask /opt/regtask/regtask
COPY runners/regtask_runners /opt/regtask/regtask_runners
RUN /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/regtask \
    && echo /opt/regtask >"$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/regtask.pth" \
    && /opt/venv/bin/python -c 'import regtask_runners, regtask.runner_contract' \
    && /opt/venv/bin/python -c 'import importlib.util as u, sys; \
sys.exit(any(u.find_spec(m) for m in ("kopf", "fastapi", "kubernetes")))'

# ---------------------------------------------------------------- runtime base
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="regtask" \
      org.opencontainers.image.base.name="python:3.11.15-slim-trixie"
# No .pyc writes at run time (bytecode is compiled at build time); caches and HOME under /tmp,
# the only writable place (an emptyDir in the chart).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache
# A named user for uid 10001: getpass.getuser() (Kopf's peer identity fallback) needs one.
RUN groupadd --system --gid 10001 regtask \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin regtask
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/regtask-entrypoint
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/regtask-entrypoint"]

# ---------------------------------------------------------------- targets
FROM runtime AS runner
LABEL org.opencontainers.image.title="regtask-runner" \
      org.opencontainers.image.description="regtask task runners (python -m regtask_runners TASK_TYPE)"
COPY --from=build-runner /opt/venv /opt/venv
COPY --from=build-runner /opt/regtask /opt/regtask
ENV CONTAINER_TYPE=runner \
    REGTASK_IMAGE_MODES=runner
# A Job's process, watched by its Job: nothing to probe.
HEALTHCHECK NONE

FROM runtime AS shim
LABEL org.opencontainers.image.title="regtask-shim" \
      org.opencontainers.image.description="regtask RPC shim (CONTAINER_TYPE=shim) and runner gateway (CONTAINER_TYPE=gateway)"
COPY --from=build-shim /opt/venv /opt/venv
COPY --from=build-shim /opt/regtask /opt/regtask
ENV CONTAINER_TYPE=shim \
    REGTASK_IMAGE_MODES="shim gateway"
EXPOSE 8080 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/regtask-entrypoint", "healthcheck"]

# Last, so a plain `docker build .` gives the operator.
FROM runtime AS operator
LABEL org.opencontainers.image.title="regtask-operator" \
      org.opencontainers.image.description="regtask RegistryTask operator (Kopf)"
COPY --from=build-operator /opt/venv /opt/venv
COPY --from=build-operator /opt/regtask /opt/regtask
ENV CONTAINER_TYPE=operator \
    REGTASK_IMAGE_MODES=operator
# 8080: Kopf liveness; 9090: Prometheus metrics (REGTASK_METRICS_PORT).
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/regtask-entrypoint", "healthcheck"]
