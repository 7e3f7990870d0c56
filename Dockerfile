# Two stages: torch builds the artifact; the worker image carries only onnxruntime and the artifact.
# Not exercised on the development machines (they have no Docker engine); see README.
FROM python:3.11-slim AS artifact
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[modelbuild]" \
 && python -m modelbuild build --out /artifact

FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir ".[worker]"
COPY --from=artifact /artifact /app/artifact
ENV EMBED_MODEL_DIR=/app/artifact \
    EMBED_BROKER_URL=redis://redis:6379/0
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
