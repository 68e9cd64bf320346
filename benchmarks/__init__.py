"""Side-by-side performance benchmarks of forml-s3 against its alternatives.

One moto S3 endpoint on 127.0.0.1 (:class:`forml_s3.demo.endpoint.Server`, with its request log) serves identical
workloads driven through forml-s3, raw boto3 and raw s3fs (the floor), ForML's posix registry on local disk
and ForML's MLflow registry provider (when ``mlflow`` is importable). Every measured run is a fresh process.

* :mod:`benchmarks.harness` - the parent: endpoint, scheduling, request accounting, table, targets, docs;
* :mod:`benchmarks.child` - one measured (or setup) run in a fresh process;
* :mod:`benchmarks.providers` - the workloads as each provider does them;
* :mod:`benchmarks.mlflowserver` - a local MLflow tracking server (one worker) for the MLflow provider;
* :mod:`benchmarks.httpcount` - counts the MLflow client's HTTP requests to its tracking server;
* :mod:`benchmarks.report` - machine description, the table, the markdown written to ``docs/benchmarks.md``.

Run ``python -m benchmarks --help``; ``bash benchmarks/run.sh`` is the one command of the recorded run.
"""
