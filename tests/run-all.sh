#!/usr/bin/env bash
# README command 2 (and CI): install what is missing, build with warnings as
# errors, run the whole ctest suite, then the unit tests and the MPI tests of
# dist/ (1-4 ranks) again under ASan+UBSan.
# (CLI tests read JSON with /usr/bin/python3, hence python3-minimal.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup-debian.sh time clang libclang-rt-14-dev python3-minimal
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DFERRY_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON -DFERRY_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L unit --output-on-failure -j"$jobs"
# (the MPI tests set their sanitizer options in tests/mpi/CMakeLists.txt; the
# CLI tests that train under mpirun are too slow in this build and stay out)
ctest --test-dir build-asan -L mpi -LE cli --output-on-failure -j"$jobs"
# The checkpoint loader's libFuzzer target, briefly (clang; warnings not fatal:
# clang's warning set differs from gcc's, which gates the code above).
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DFERRY_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_ckpt fuzz_ckpt_seed
ctest --test-dir build-fuzz -L fuzz --output-on-failure
