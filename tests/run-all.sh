#!/usr/bin/env bash
# README command 2 (and CI): install what is missing, build with warnings as
# errors, run the whole ctest suite, then the unit tests, the MPI tests of
# dist/ (1-4 ranks) and most CLI tests again under ASan+UBSan.
# (CLI tests read JSON with /usr/bin/python3, hence python3-minimal.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup-debian.sh time clang libclang-rt-14-dev python3-minimal
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFERRY_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
# -O2 -g: at -O0 the CLI tests that train take tens of minutes under ASan.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_SANITIZE=ON -DFERRY_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L unit --output-on-failure -j"$jobs"
# (the MPI and CLI tests set their sanitizer options in tests/CMakeLists.txt
# and tests/mpi/CMakeLists.txt)
ctest --test-dir build-asan -L mpi -LE cli --output-on-failure -j"$jobs"
# The CLI tests run the ferry binary as a user would (pipelines, coordinator,
# faults, resume) under ASan too, but for the two that train longest (over
# 10 min each here under ASan; they pass in the build above;
# cli.mpi_multitask_smoke takes multi-task training through ASan instead) and
# the cluster ones (Slurm daemons, network namespaces).
ctest --test-dir build-asan -L cli -LE cluster -E 'cli\.(examples_accuracy|mpi_multitask)$' \
  --output-on-failure -j"$jobs"
# The checkpoint loader's libFuzzer target, briefly (clang; warnings not fatal:
# clang's warning set differs from gcc's, which gates the code above).
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DFERRY_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_ckpt fuzz_ckpt_seed
ctest --test-dir build-fuzz -L fuzz --output-on-failure
