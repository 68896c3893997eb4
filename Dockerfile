# tokenpipe: docker build -t tokenpipe . && docker run -p 8080:8080 tokenpipe
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY providers ./providers
COPY config ./config
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home tokenpipe

USER tokenpipe
EXPOSE 8080
# SIGTERM (docker stop) drains in-flight streams for TOKENPIPE_DRAIN_SECONDS;
# give `docker stop --time` a little more than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["tokenpipe"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
