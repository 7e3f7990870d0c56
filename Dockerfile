# One file, four images (docker build --target ...): the model artifact is built with torch in its own
# stage and copied into the worker; the gateway and Flower carry neither torch nor ONNX Runtime.
# Not exercised on the development machines (they have no Docker engine); see README.
FROM python:3.11-slim AS artifact
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu ".[modelbuild]" \
 && python -m modelbuild build --out /artifact

FROM python:3.11-slim AS base
WORKDIR /app
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin embedfleet
COPY pyproject.toml README.md ./
COPY contract contract
COPY producer producer
COPY worker worker
COPY modelbuild modelbuild
COPY localfleet localfleet
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

FROM base AS worker
RUN pip install --no-cache-dir ".[worker]"
COPY --from=artifact /artifact /app/artifact
ENV EMBED_MODEL_DIR=/app/artifact
USER 10001
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s CMD ["python", "-m", "worker", "health"]
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]

FROM base AS gateway
RUN pip install --no-cache-dir ".[gateway]"
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
CMD ["python", "-m", "producer", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS flower
RUN pip install --no-cache-dir ".[flower]"
USER 10001
EXPOSE 5555
HEALTHCHECK --interval=15s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5555/healthcheck')"]
CMD ["celery", "-A", "worker", "flower", "--port=5555"]
