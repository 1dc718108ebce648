FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot bot
COPY cogs cogs
COPY engine engine
COPY storage storage
RUN pip install --no-cache-dir -e '.[local]'
ENV DATA_DIR=/data HF_HOME=/models
VOLUME ["/data", "/models"]
CMD ["python", "-m", "bot"]
