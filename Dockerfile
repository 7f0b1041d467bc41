# runledger API / projector image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain ./domain
COPY projections ./projections
COPY infra ./infra
COPY api ./api
RUN pip install --no-cache-dir .
ENV RUNLEDGER_HOST=0.0.0.0
EXPOSE 8000
CMD ["runledger", "serve"]
