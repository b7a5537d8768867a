# syntax=docker/dockerfile:1
# The model repository as an image, for deploy/fill/: model_repo/ of this checkout (asr_streaming/,
# exported/NAME/, adapters/) at /model_repo. Put your own export in model_repo/exported/NAME first
# (and point MODEL_DIR in deploy/triton-config.yaml and the gateway's --model-dir at it). The
# tenants come from a ConfigMap, so model_repo/tenants.toml stays out, and so do NeMo checkpoints.
#   docker build -f deploy/model-repo.Dockerfile -t registry.example.com/brogue/model-repo:0.1.0 .
FROM busybox:1.36
COPY model_repo /model_repo
