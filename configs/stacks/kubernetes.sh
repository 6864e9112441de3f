#!/usr/bin/env bash
# The production path (docs/operations.md, "Past one machine"): a Kubernetes orchestrator (every
# step a pod), a Kubernetes step operator `gpu` (the steps configs/train_gpu.yaml puts there, on a
# GPU node pool; MirroredStrategy over the GPUs of the pod), and an object-store artifact store
# (S3, an S3-compatible server, or GCS) that holds the datasets' shards, the models and the
# training backups a retried pod resumes from. The data steps fan out (pipelines/data.py): each
# chunk of the source is read and scored in a pod of its own, PARALLELISM pods at a time.
# Needs: a kubectl context for the cluster, a container registry, Docker. Run from the project root.
set -euo pipefail
CONTEXT=${CONTEXT:-my-cluster}                    # kubectl context
NAMESPACE=${NAMESPACE:-zenml}
ARTIFACTS=${ARTIFACTS:-s3://my-bucket/bloodcell}  # or gs://my-bucket/bloodcell
S3_ENDPOINT=${S3_ENDPOINT:-}                      # only for S3-compatible servers (MinIO, Ceph)
REGISTRY=${REGISTRY:-123456789012.dkr.ecr.eu-west-1.amazonaws.com}
GPU_NODE_SELECTOR=${GPU_NODE_SELECTOR:-'{"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}'}
CHUNK_SIZE=${CHUNK_SIZE:-20000}                   # files a chunk pod reads (docs/operations.md)
PARALLELISM=${PARALLELISM:-10}                    # chunk pods at once

if [[ $ARTIFACTS == gs://* ]]; then
  STORE_FLAVOR=gcp
  .venv/bin/zenml integration install gcp -y
  STORE_ARGS=()
else
  STORE_FLAVOR=s3
  .venv/bin/pip install -e '.[s3]'                 # s3fs and boto3 at the versions the project pins
  STORE_ARGS=()
  [[ -n $S3_ENDPOINT ]] && STORE_ARGS=(--client_kwargs="{\"endpoint_url\": \"$S3_ENDPOINT\"}")
fi
.venv/bin/pip install 'kubernetes>=21.7,<26'         # the client ZenML's kubernetes flavors import

zenml orchestrator register k8s --flavor=kubernetes --kubernetes_context="$CONTEXT" --kubernetes_namespace="$NAMESPACE"
zenml step-operator register gpu --flavor=kubernetes --kubernetes_context="$CONTEXT" --kubernetes_namespace="$NAMESPACE"
zenml artifact-store register remote --flavor="$STORE_FLAVOR" --path="$ARTIFACTS" "${STORE_ARGS[@]}"
zenml container-registry register registry --flavor=default --uri="$REGISTRY"
zenml image-builder register local-docker --flavor=local
zenml stack register k8s-gpu -o k8s -s gpu -a remote -c registry -i local-docker --set

# Pod sizes: no step holds more than a shard or a chunk of pixels, so 6 GiB pods do up to a few
# million images (benchmarks/scale.py: 3.3 GB at 1M; docs/operations.md, "Past one machine"); a
# chunk pod holds one chunk's features; GPU pods are pinned to the GPU node pool.
# (tests/test_stacks.py checks every key below against the installed ZenML)
cat <<YAML
Add to your pipeline config (configs/train_gpu.yaml has the step_operator lines already):
parameters:
  fan_out: {chunk_size: $CHUNK_SIZE}
environment:
  ZENML_DYNAMIC_PIPELINE_WORKER_COUNT: "$PARALLELISM"
  ZENML_EXECUTION_CONTEXT_STEP_RUN_CACHE_SIZE: "1000000"   # pipelines/data.py says why
settings:
  orchestrator:
    pod_settings:
      resources: {requests: {cpu: "2", memory: 6Gi}, limits: {memory: 6Gi}}
steps:
  ingest_chunk:
    runtime: isolated
    settings:
      orchestrator:
        pod_settings:
          resources: {requests: {cpu: "2", memory: 2Gi}, limits: {memory: 2Gi}}
  score_chunk:
    runtime: isolated
    settings:
      orchestrator:
        pod_settings:
          resources: {requests: {cpu: "1", memory: 2Gi}, limits: {memory: 2Gi}}
  train:
    step_operator: gpu
    settings:
      step_operator:
        pod_settings:
          node_selectors: $GPU_NODE_SELECTOR
YAML
