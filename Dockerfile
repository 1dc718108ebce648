# The bot (python -m bot) and the engine server (python -m engine serve) in one image; see docker-compose.yml.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# runs as an unprivileged user; it owns only its data and model-cache folders
RUN useradd --create-home --uid 10001 imaginebot \
    && mkdir -p /data /models \
    && chown imaginebot:imaginebot /data /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY cogs cogs
COPY engine engine
COPY storage storage
COPY sandbox sandbox
RUN pip install '.[local,postgres,s3]'
USER imaginebot
ENV DATA_DIR=/data HF_HOME=/models
VOLUME ["/data", "/models"]
EXPOSE 8080
CMD ["python", "-m", "bot"]
