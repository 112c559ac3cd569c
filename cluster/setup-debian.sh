#!/usr/bin/env bash
# Installs the Debian 12 packages ferry needs (only those missing), as root or
# through sudo. Usage: bash cluster/setup-debian.sh [extra-package ...]
set -euo pipefail
pkgs=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libscalapack-openmpi-dev
      libopenblas-dev libprotobuf-c-dev protobuf-c-compiler zlib1g-dev libyaml-dev
      dataset-fashion-mnist gnuplot-nox "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
