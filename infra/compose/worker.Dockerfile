# GPU Prefect worker for the MIRage pipeline: the project's pinned environment with the
# CUDA build of torch (the default PyPI wheel on Linux x86_64 bundles the CUDA runtime;
# the host needs only the NVIDIA driver + container toolkit).  The code itself is the
# checkout mounted at /workspace/mirage (installed editable at container start), so a
# `git pull` there updates the pipeline without rebuilding the image.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mirage
COPY constraints.txt pyproject.toml README.md ./
# torch first and pinned (as in the Makefile), then the locked dependencies of the
# project (not the project itself), then the DVC S3 plugin for the MinIO remote.
RUN pip install --no-cache-dir torch==2.13.0 \
 && python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(d['dependencies']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt dvc-s3==3.3.0

WORKDIR /workspace/mirage
CMD ["prefect", "worker", "start", "--pool", "mirage-gpu", "--type", "process"]
