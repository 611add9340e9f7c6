# syntax=docker/dockerfile:1
# The prediction API as an AWS Lambda container image: API Gateway (REST, proxy integration) → the
# Lambda Runtime Interface Client → engagement_dagster.api.lambda_handler.handler (Mangum → FastAPI).
#
#   docker build --platform linux/amd64 -f containers/api.Dockerfile -t "$API_REPO:$SHA" .   (repository root)
#
# Only what the API imports is installed: no Dagster, dbt or DuckDB (the project's main dependencies
# carry them). API_DISTRIBUTIONS names the distributions; their versions come from pyproject.toml, so
# there is one place for them. tests/test_api_lambda.py runs the API from the files this image copies,
# checks that it imports exactly these distributions (and none of Dagster's or dbt's), and runs the
# selection step below against pyproject.toml.
#
# Models are not in the image: with ENGAGEMENT_ENV=aws the API loads the registry's champions from the
# lake bucket (models/) when the function initialises, and picks up a new champion without a new image.
#
# Base: the Debian slim Python of containers/Dockerfile plus AWS's Runtime Interface Client, not
# public.ecr.aws/lambda/python:3.11. That image is Amazon Linux 2 (glibc 2.26), for which xgboost-cpu
# publishes no wheel newer than 3.0.5 (pyproject.toml needs >= 3.2, the version the models are trained
# with) and numpy none newer than 2.2. Pin the base's digest where the registry is reachable
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`).
FROM python:3.11.14-slim-bookworm

# Lambda runs the image on a read-only file system (only /tmp is writable) as an unprivileged user of
# its own: the bytecode is compiled at build time below, and nothing is written at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LAMBDA_TASK_ROOT=/var/task \
    PYTHONPATH=/var/task \
    ENGAGEMENT_ENV=aws

WORKDIR /var/task

ARG API_DISTRIBUTIONS="boto3 cachetools fastapi mangum numpy pandas pyarrow pydantic scikit-learn xgboost-cpu"
ARG AWSLAMBDARIC_VERSION=4.2.2

# Layer 1, the dependencies: the API's requirements as pyproject.toml pins them (the main dependencies
# and the `api` extra), rebuilt only when pyproject.toml changes. A name missing there fails the build.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import os, re, sys, tomllib; \
project = tomllib.load(open(sys.argv[1], 'rb'))['project']; \
declared = project['dependencies'] + project['optional-dependencies']['api']; \
name = lambda requirement: re.sub(r'[-_.]+', '-', re.match(r'[A-Za-z0-9._-]+', requirement).group(0)).lower(); \
wanted = set(os.environ['API_DISTRIBUTIONS'].split()); \
chosen = [requirement for requirement in declared if name(requirement) in wanted]; \
missing = sorted(wanted - {name(requirement) for requirement in chosen}); \
sys.exit(f'not declared in pyproject.toml: {missing}') if missing else print(*chosen, sep=chr(10))" \
      /tmp/pyproject.toml > /tmp/api-requirements.txt
RUN pip install --only-binary=:all: -r /tmp/api-requirements.txt "awslambdaric==${AWSLAMBDARIC_VERSION}" \
 && rm /tmp/api-requirements.txt /tmp/pyproject.toml

# Layer 2, the code: the API and the plain library it uses (core/ never imports Dagster), not the
# Dagster definitions. On PYTHONPATH, not installed: nothing reads the distribution's metadata.
COPY engagement_dagster/__init__.py ./engagement_dagster/
COPY engagement_dagster/core ./engagement_dagster/core
COPY engagement_dagster/api ./engagement_dagster/api
RUN python -m compileall -q engagement_dagster

ENTRYPOINT ["python", "-m", "awslambdaric"]
CMD ["engagement_dagster.api.lambda_handler.handler"]
