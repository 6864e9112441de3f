#!/usr/bin/env bash
# Vertex AI orchestrator + Vertex AI step operator (accelerators) + GCS artifact store.
# Needs: gcloud auth, a GCS bucket, an Artifact Registry repo, `zenml integration install gcp`.
set -euo pipefail
PROJECT=${PROJECT:-my-gcp-project}
REGION=${REGION:-europe-west4}
ARTIFACTS=${ARTIFACTS:-gs://my-bucket/bloodcell}
REGISTRY=${REGISTRY:-$REGION-docker.pkg.dev/$PROJECT/zenml}
ACCELERATOR=${ACCELERATOR:-NVIDIA_TESLA_T4}

zenml integration install gcp -y
zenml orchestrator register vertex --flavor=vertex --project="$PROJECT" --location="$REGION"
zenml step-operator register gpu --flavor=vertex --project="$PROJECT" --region="$REGION"
zenml artifact-store register gcs --flavor=gcp --path="$ARTIFACTS"
zenml container-registry register gar --flavor=gcp --uri="$REGISTRY"
zenml image-builder register local-docker --flavor=local
zenml stack register vertex-gpu -o vertex -s gpu -a gcs -c gar -i local-docker --set
cat <<YAML
Add to the steps that run on gpu in your config (configs/train_gpu.yaml):
    settings:
      step_operator:
        accelerator_type: $ACCELERATOR
        accelerator_count: 1
        machine_type: n1-standard-8
YAML
