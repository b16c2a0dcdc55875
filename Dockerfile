# canary-gate image: the pipeline and the scenario generator (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pipeline ./pipeline
COPY schemas ./schemas
COPY examples ./examples
RUN pip install --no-cache-dir --no-deps .
EXPOSE 9464
ENTRYPOINT ["canary-gate"]
CMD ["--help"]
