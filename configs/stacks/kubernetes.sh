#!/usr/bin/env bash
# Kubernetes orchestrator + Kubernetes step operator (GPU node pool) + S3 or GCS artifact store.
# Needs: kubectl context for the cluster, a container registry, and `zenml integration install kubernetes s3`
# (or gcp). Run from the project root.
set -euo pipefail
CONTEXT=${CONTEXT:-my-cluster}                 # kubectl context
NAMESPACE=${NAMESPACE:-zenml}
ARTIFACTS=${ARTIFACTS:-s3://my-bucket/bloodcell}  # or gs://my-bucket/bloodcell
REGISTRY=${REGISTRY:-123456789012.dkr.ecr.eu-west-1.amazonaws.com}
GPU_NODE_SELECTOR=${GPU_NODE_SELECTOR:-'{"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}'}

zenml integration install kubernetes "$( [[ $ARTIFACTS == gs://* ]] && echo gcp || echo s3 )" -y
zenml orchestrator register k8s --flavor=kubernetes --kubernetes_context="$CONTEXT" --kubernetes_namespace="$NAMESPACE"
zenml step-operator register gpu --flavor=kubernetes --kubernetes_context="$CONTEXT" --kubernetes_namespace="$NAMESPACE"
zenml artifact-store register remote --flavor="$( [[ $ARTIFACTS == gs://* ]] && echo gcp || echo s3 )" --path="$ARTIFACTS"
zenml container-registry register registry --flavor=default --uri="$REGISTRY"
zenml image-builder register local-docker --flavor=local
zenml stack register k8s-gpu -o k8s -s gpu -a remote -c registry -i local-docker --set
# GPU pods: steps with settings.resources.gpu_count get nvidia.com/gpu limits; pin them to GPU nodes:
cat <<YAML
Add to the steps that run on gpu in your config (configs/train_gpu.yaml):
    settings:
      step_operator:
        pod_settings:
          node_selectors: $GPU_NODE_SELECTOR
YAML
