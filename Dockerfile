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
