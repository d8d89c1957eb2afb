# The aggregator: Flower's SuperLink (the job's ServerApp runs under it) and the Secure Traffic
# Engine that controls the relays.
#   docker build -f deploy/docker/aggregator.Dockerfile -t paroma-med/aggregator:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# The CPU build of torch, pinned as in pyproject.toml (the ServerApp builds the job's model).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0

WORKDIR /opt/paroma
COPY pyproject.toml README.md ./
COPY paroma ./paroma
COPY clinical_node ./clinical_node
COPY protection_layer ./protection_layer
COPY aggregator ./aggregator
COPY interconnect ./interconnect
COPY deploy ./deploy
RUN pip install . && rm -rf /root/.cache

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin paroma \
 && mkdir -p /federation/work && chown -R paroma:paroma /federation
USER paroma
WORKDIR /federation

HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
  CMD ["python", "-m", "deploy.healthcheck", "env"]
CMD ["paroma", "--help"]
