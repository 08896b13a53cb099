# One image for all four services; docker-compose.yml picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HTTP_HOST=0.0.0.0 \
    GATEWAY_HOST=0.0.0.0

WORKDIR /app
COPY . .
RUN pip install . \
    && rm -rf build *.egg-info \
    && useradd --system --create-home --uid 10001 app \
    && mkdir -p /app/.dev \
    && chown app /app/.dev

USER app
EXPOSE 8080 8081 8082 8083
# As PID 1, Python ignores SIGTERM but turns SIGINT into a clean shutdown.
STOPSIGNAL SIGINT
CMD ["python", "-m", "gateway"]
