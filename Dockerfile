# One image for every Sonalyze service; the service is chosen by the command:
#   docker run sonalyze gateway | lobby | measurement | simulation | storage
# and the task queue's workers by the entrypoint:
#   docker run --entrypoint sonalyze sonalyze worker --processes 1
FROM python:3.11-slim AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
 && useradd --create-home --uid 10001 sonalyze \
 && mkdir -p /data /blobs \
 && chown sonalyze /data /blobs

USER sonalyze
ENV HOST=0.0.0.0
EXPOSE 8000 8001 8002 8003 8004
ENTRYPOINT ["sonalyze", "serve"]
CMD ["gateway"]
