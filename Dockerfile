# One image for every ChronoX service: worker, beat, flower, stream and migrations.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY setup.cfg pyproject.toml README.md celeryconfig.py alembic.ini ./
COPY alembic ./alembic
COPY chronox ./chronox
RUN pip install --no-cache-dir -e . && useradd --create-home chronox
USER chronox
CMD ["chronox", "--help"]
