#!/usr/bin/env bash
# The recorded benchmark run, one command: bash benchmarks/run.sh [python -m benchmarks options]
#
# MLflow goes into its own virtualenv, .venv-bench (gitignored), never into the development .venv: it pins
# packages of its own, and forml-s3 does not depend on it. The environment is made once, then reused.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-bench/bin/mlflow ]; then
    python3.11 -m venv .venv-bench
    # the 'bench' extra, where pyproject.toml has it; else the same pin spelled out
    if grep -q '^bench *=' pyproject.toml; then
        .venv-bench/bin/pip install -e '.[bench]'
    else
        .venv-bench/bin/pip install -e . 'mlflow==3.17.2'
    fi
fi
exec .venv-bench/bin/python -m benchmarks "$@"
