# A relay of the federation's network (`paroma relay run`): forwards the sites' traffic hop by
# hop along the secure paths the Secure Traffic Engine installs. No torch, no clinical data.
#   docker build -f deploy/docker/relay.Dockerfile -t paroma-med/relay:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/paroma
COPY pyproject.toml README.md ./
COPY paroma ./paroma
COPY clinical_node ./clinical_node
COPY protection_layer ./protection_layer
COPY aggregator ./aggregator
COPY interconnect ./interconnect
COPY deploy ./deploy
# Only what the relay command imports (the pins of pyproject.toml): the project without its
# machine-learning dependencies keeps the image small.
RUN pip install --no-deps . \
 && pip install typer==0.20.1 rich==14.3.4 fastapi==0.138.2 uvicorn==0.49.0 httpx==0.28.1 \
      cryptography==50.0.2 networkx==3.6.1 pyyaml==6.0.4 cvss==3.6 \
 && rm -rf /root/.cache

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin paroma \
 && mkdir -p /federation/work && chown -R paroma:paroma /federation
USER paroma
WORKDIR /federation

HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=6 \
  CMD ["python", "-m", "deploy.healthcheck", "env"]
CMD ["paroma", "relay", "--help"]
