# canary-gate image: the pipeline and the scenario generator (docker-compose.yml, docs/deploy.md).
#
# Runtime dependencies only. The build stage installs [project].dependencies of pyproject.toml
# into a virtualenv with requirements.lock as *constraints*: every runtime package and each of
# theirs gets its locked version, and nothing else of the lock (pytest, ruff, mypy, ...) is
# installed. The runtime stage copies that virtualenv and nothing of the build.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/canary-gate
WORKDIR /src
# Dependencies first, in their own layer: a change to the code does not reinstall them.
COPY pyproject.toml requirements.lock ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > runtime-requirements.txt \
    && /opt/canary-gate/bin/pip install --constraint requirements.lock --requirement runtime-requirements.txt
COPY README.md ./
COPY pipeline ./pipeline
RUN /opt/canary-gate/bin/pip install --no-deps .
# The native decoder (native/, Rust, PyO3): a minimal Rust toolchain in this stage only; its wheel
# goes into the virtualenv, the toolchain stays behind. Without it canary-gate would fall back to
# the pure-Python decoder (about 4x slower) with a warning.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain 1.95.0 \
    && rm -rf /var/lib/apt/lists/*
COPY native ./native
RUN PATH=/root/.cargo/bin:$PATH MATURIN_PEP517_ARGS=--locked /opt/canary-gate/bin/pip install --no-deps ./native

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/canary-gate /opt/canary-gate
ENV PATH=/opt/canary-gate/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /app canary-gate
WORKDIR /app
COPY schemas ./schemas
COPY examples ./examples
RUN chown canary-gate /app
USER canary-gate
EXPOSE 9464
# No HEALTHCHECK here: only `run --metrics-port` serves /metrics; docker-compose.yml checks that
# with python3 (this image has no curl or wget).
ENTRYPOINT ["canary-gate"]
CMD ["--help"]
