# Shoal's one image: `shoal serve` (replicas), `shoal gateway`, `shoal operator`.
#   docker build -t shoal .                              # slim: numpy/scikit-learn/MLflow models
#   docker build --build-arg FLAVOR=torch -t shoal:torch .   # + torch from PyPI (CUDA-capable)
# On machines without a registry, scripts/image builds a Debian base here and passes BASE_IMAGE.
# BASE_IMAGE must provide python3 (3.11+) with the venv module: python:3.11-slim does, and so
# does scripts/image's debootstrap base (Debian's python3 + python3-venv).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv in /opt/shoal with the dependencies, then Shoal itself -------------
FROM ${BASE_IMAGE} AS build
ARG FLAVOR=slim
# Set only by scripts/image (the host's CA bundle, mounted read-only for the build); unset, pip
# uses its own bundle. Never written into a layer.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/shoal
# The dependency layer depends only on pyproject.toml (a stub package stands in for the
# source and README), so editing Shoal's code or docs reuses it. Pins: the versions the test
# suite runs with. Test folders of the dependencies are dropped (never imported; ~60 MB).
COPY pyproject.toml /src/
RUN set -eu; \
    mkdir -p /src/shoal && touch /src/shoal/__init__.py /src/README.md; \
    extra="scikit-learn==1.9.1 pandas==3.1.1 mlflow-skinny==3.17.2"; \
    case "$FLAVOR" in \
      slim) ;; \
      torch) extra="$extra torch==2.15.0" ;; \
      *) echo "FLAVOR must be slim or torch, not $FLAVOR" >&2; exit 2 ;; \
    esac; \
    /opt/shoal/bin/pip install "/src[operator]" $extra; \
    /opt/shoal/bin/pip uninstall -y shoal; \
    find /opt/shoal/lib -depth -type d -name tests -exec rm -rf {} +; \
    rm -rf /src
# (setuptools' build/ of the stub must not survive: its files look newer than the source's.)
COPY pyproject.toml README.md /src/
COPY shoal /src/shoal
RUN /opt/shoal/bin/pip install --no-deps /src \
    && /opt/shoal/bin/pip uninstall -y pip setuptools wheel \
    && rm -rf /src
# Bundled examples (examples.iris, examples.adder, ...) so the first ModelServices run on the
# plain image; compiled now because the root filesystem is read-only at run time.
COPY examples /app/examples
RUN /opt/shoal/bin/python -m compileall -q /app

# ---- final: the virtualenv and the examples on a clean base; no pip, no compilers ------------
FROM ${BASE_IMAGE}
ARG FLAVOR=slim
# UID/GID = the operator's runAsUser/runAsGroup (shoal/operator/settings.py: run_as_user).
ARG SHOAL_UID=1000
# The base's own pip and ensurepip wheels go too (python:3.11-slim ships pip, Debian's venv
# package the wheels): nothing in the final image can install packages.
RUN (python3 -m pip uninstall -y -q pip setuptools wheel 2>/dev/null || true) \
    && rm -rf /usr/share/python-wheels /root/.cache \
    && (getent group shoal || groupadd --gid "$SHOAL_UID" shoal) >/dev/null \
    && useradd --uid "$SHOAL_UID" --gid "$SHOAL_UID" --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin shoal \
    && mkdir -p /app/code && chown "$SHOAL_UID:$SHOAL_UID" /app/code
COPY --from=build /opt/shoal /opt/shoal
COPY --from=build /app/examples /app/examples
# Read-only root filesystem: everything that writes goes to /tmp (an emptyDir in the pods).
# /app/code is where small models' code can be mounted (a ConfigMap) without a new image.
ENV PATH=/opt/shoal/bin:$PATH \
    PYTHONPATH=/app/code:/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    JOBLIB_TEMP_FOLDER=/tmp
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.source="https://github.com/shoal-dev/shoal" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.shoal.flavor="${FLAVOR}"
WORKDIR /app
USER ${SHOAL_UID}:${SHOAL_UID}
EXPOSE 8000
ENTRYPOINT ["shoal"]
CMD ["--help"]
