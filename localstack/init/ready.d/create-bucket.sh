#!/bin/bash
# Runs inside the LocalStack container once it is ready: creates the bucket the test suite and the
# README examples use. The tests create their own fresh buckets as well (test-<random>); this one is for
# trying the CLI by hand (`forml-s3 ls s3://forml-s3-test/forml`) and for the compose healthcheck.
set -euo pipefail
BUCKET="${FORML_S3_BUCKET:-forml-s3-test}"
if ! awslocal s3api head-bucket --bucket "$BUCKET" 2>/dev/null; then
    awslocal s3api create-bucket --bucket "$BUCKET"
fi
echo "forml-s3: bucket s3://$BUCKET ready"
