#!/usr/bin/env bash
# SageMaker orchestrator + SageMaker step operator (GPU training instance) + S3 artifact store.
# Needs: AWS credentials, an execution role, an S3 bucket, an ECR repo, `zenml integration install aws s3`.
set -euo pipefail
ROLE=${ROLE:-arn:aws:iam::123456789012:role/zenml-sagemaker}
REGION=${REGION:-eu-west-1}
ARTIFACTS=${ARTIFACTS:-s3://my-bucket/bloodcell}
REGISTRY=${REGISTRY:-123456789012.dkr.ecr.$REGION.amazonaws.com}
INSTANCE=${INSTANCE:-ml.g5.xlarge}

zenml integration install aws s3 -y
zenml orchestrator register sagemaker --flavor=sagemaker --execution_role="$ROLE" --region="$REGION"
zenml step-operator register gpu --flavor=sagemaker --role="$ROLE"
zenml artifact-store register s3 --flavor=s3 --path="$ARTIFACTS"
zenml container-registry register ecr --flavor=aws --uri="$REGISTRY"
zenml image-builder register local-docker --flavor=local
zenml stack register sagemaker-gpu -o sagemaker -s gpu -a s3 -c ecr -i local-docker --set
cat <<YAML
Add to the steps that run on gpu in your config (configs/train_gpu.yaml):
    settings:
      step_operator:
        instance_type: $INSTANCE
YAML
