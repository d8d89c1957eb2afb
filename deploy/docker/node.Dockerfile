# A hospital's clinical node: its FHIR API (`paroma node serve`) and its Flower SuperNode, whose
# ClientApp trains each job in the node's sandbox on the data the protection layer releases.
#   docker build -f deploy/docker/node.Dockerfile -t paroma-med/node:0.1.0 .
FROM python:3.11-slim

# bubblewrap: the strongest training sandbox (clinical_node/sandbox); without the privileges it
# needs inside a container the node falls back to the next backend that proves its isolation.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap util-linux \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
# The CPU build of torch, pinned as in pyproject.toml (the default index would bring CUDA).
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

# Non-root; /federation/work is the deployment's volume (site folders, keys: 0600, 0700).
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin paroma \
 && mkdir -p /federation/work && chown -R paroma:paroma /federation
USER paroma
WORKDIR /federation

# The probe comes from the service: PAROMA_HEALTHCHECK="https 127.0.0.1 8201 /fhir/metadata CA".
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
  CMD ["python", "-m", "deploy.healthcheck", "env"]
CMD ["paroma", "--help"]
