#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main job with
# mpirun: the transfer pipeline of examples/transfer-fmnist.yaml (pre-train the
# CNN on Fashion-MNIST classes 0-4, then scratch / feature-extract / finetune
# on classes 5-9 with K = 10, 50, 200 labels per class x 3 seeds, then the
# report in runs/demo-transfer/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup-debian.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
# One BLAS thread per rank; as root mpirun needs --allow-run-as-root.
export OPENBLAS_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1
np=${FERRY_NP:-2}
mpirun --allow-run-as-root --oversubscribe -np "$np" \
  build/ferry train examples/transfer-fmnist.yaml --out runs/demo-transfer "$@"
