# syntax=docker/dockerfile:1
# Triton for Brogue on GPUs: NVIDIA's container (the tag of server/triton_container.py's
# DEFAULT_IMAGE: 24.10 = server 2.51, the bundled version) with what the asr_streaming python-backend
# model imports baked in, the `docker_command(..., install=False, torch=True)` image of
# docs/deploy-gpu.md. brogue is installed with --no-deps: its CPU onnxruntime requirement would
# shadow onnxruntime-gpu. torch: the torch-cuda execution provider (deploy/triton-config.yaml).
# Build from the repository root, from the same commit as the gateway image:
#   docker build -f deploy/triton.Dockerfile -t registry.example.com/brogue/triton:0.1.0 .

FROM nvcr.io/nvidia/tritonserver:24.10-py3
ENV PIP_BREAK_SYSTEM_PACKAGES=1 OPENBLAS_NUM_THREADS=1
COPY pyproject.toml README.md /tmp/brogue/
COPY brogue /tmp/brogue/brogue
COPY server /tmp/brogue/server
COPY export /tmp/brogue/export
COPY clients /tmp/brogue/clients
COPY bench /tmp/brogue/bench
RUN pip install --no-cache-dir --no-deps /tmp/brogue \
 && pip install --no-cache-dir "numpy<2" "safetensors>=0.4" "onnxruntime-gpu>=1.18" "torch==2.13.0" \
 && rm -rf /tmp/brogue
