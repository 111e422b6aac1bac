# agentfleet: the server, as a non-root user, with a health check.
#   docker build -t agentfleet .
#   docker run -p 8765:8765 -e AGENTFLEET_ADMIN_TOKEN=afk_... agentfleet
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY server ./server
COPY tools ./tools
COPY profiles ./profiles
COPY workflows ./workflows
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# A dedicated user owns the data dir; process agents run sandboxed as it (docs/security.md).
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/agentfleet --shell /usr/sbin/nologin agentfleet
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/agentfleet
ENV AGENTFLEET_DATA_DIR=/var/lib/agentfleet/data \
    AGENTFLEET_HOST=0.0.0.0 \
    AGENTFLEET_PORT=8765 \
    PYTHONUNBUFFERED=1
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=2)"]
CMD ["agentfleet", "serve"]
