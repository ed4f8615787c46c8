# syntax=docker/dockerfile:1
# llm-cost-exporter: slim, non-root, read-only-root-filesystem friendly, reproducible.
#   docker build -t llm-cost-exporter \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --read-only --tmpfs /tmp -v llm-cost-state:/var/lib/llm-cost-exporter \
#     -e OPENAI_ADMIN_KEY -v "$PWD/config.yml:/etc/llm-cost-exporter/config.yml:ro" \
#     -p 127.0.0.1:9877:9877 llm-cost-exporter
# The same image runs the provider simulator: `... llm-cost-exporter simulate --listen 0.0.0.0:9878`.
#
# Reproducible: the base is pinned by exact tag and digest (the index digest that public
# projects pin for python:3.11.14-slim-bookworm; re-check it with
# `docker buildx imagetools inspect python:3.11.14-slim-bookworm` when bumping); every Python
# package, the build backend included, comes from requirements.lock with its sha256
# (`pip install --require-hashes`). Regenerate the lock with
#   pip-compile --generate-hashes --allow-unsafe --all-build-deps --strip-extras \
#     --extra aws --extra azure --extra gcp \
#     --output-file requirements.lock pyproject.toml
# PYTHON_IMAGE may point elsewhere (a mirror, or the test's local Debian base): the image only
# needs python3 with venv/ensurepip, /bin/sh, groupadd/useradd.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- build: locked dependencies, then the project's wheel, into a venv ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements.lock ./
RUN python3 -m venv /opt/llm-cost-exporter \
 && /opt/llm-cost-exporter/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY simulator ./simulator
# The project itself: built with the locked setuptools (no build isolation, nothing unpinned
# fetched), installed without dependencies (they are all locked above), then the build-only
# packages leave the venv.
RUN /opt/llm-cost-exporter/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/llm-cost-exporter/bin/pip install --no-deps /wheels/*.whl \
 && /opt/llm-cost-exporter/bin/pip uninstall -y -q setuptools \
 && /opt/llm-cost-exporter/bin/pip check \
 && /opt/llm-cost-exporter/bin/llm-cost-exporter --help >/dev/null

# --- runtime ----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="llm-cost-exporter" \
      org.opencontainers.image.description="Prometheus exporter for LLM provider usage and cost" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="python:3.11.14-slim-bookworm"

# No .pyc writes (read-only root), unbuffered logs, the venv first on PATH. The revision also
# labels llm_exporter_build_info.
ENV PATH=/opt/llm-cost-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LLM_EXPORTER_REVISION=${REVISION}

# A fixed numeric uid/gid so volume ownership and Kubernetes runAsUser are predictable.
RUN groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid exporter --no-create-home \
      --home-dir /var/lib/llm-cost-exporter --shell /usr/sbin/nologin exporter \
 && install -d -o exporter -g exporter -m 0750 /var/lib/llm-cost-exporter \
 && install -d -o exporter -g exporter -m 0755 /var/lib/llm-cost-history \
 && install -d -m 0755 /etc/llm-cost-exporter

COPY --from=build /opt/llm-cost-exporter /opt/llm-cost-exporter
# Defaults that can be replaced by a bind mount or a ConfigMap. Keys never live in them:
# they come from OPENAI_ADMIN_KEY / ANTHROPIC_ADMIN_KEY / GROQ_API_KEY (or *_FILE); an
# account without a key is skipped, so the image starts with none.
COPY config.example.yml /etc/llm-cost-exporter/config.yml
COPY config.demo.yml /etc/llm-cost-exporter/config.demo.yml

# The state file (SQLite ledger) is the only thing written: a relative state_file lands in
# this volume, so the container runs with a read-only root filesystem (plus a /tmp tmpfs).
WORKDIR /var/lib/llm-cost-exporter
VOLUME ["/var/lib/llm-cost-exporter"]
# The compose one-shot `history` hands its OpenMetrics files to promtool through this one:
# readable by Prometheus's user, unlike the state directory.
VOLUME ["/var/lib/llm-cost-history"]
USER 10001:10001

EXPOSE 9877

# stdlib only (no curl in the image). Assumes the default --web.listen-address (:9877).
# Shell form (CMD-SHELL): podman 4.3 splits exec-form arguments on spaces.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9877/healthz', timeout=4)"

ENTRYPOINT ["llm-cost-exporter"]
CMD ["--config.file=/etc/llm-cost-exporter/config.yml"]
