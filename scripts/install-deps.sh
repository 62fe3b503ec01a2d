#!/usr/bin/env bash
# install-deps.sh: install the Debian packages calmflow needs, only those missing.
# Does nothing (and needs no network) when everything is already present. Slurm and munge are
# for the `slurm` tests, which start their own throw-away cluster (tests/slurm/cluster.sh) and
# need no system-wide Slurm configuration.
# Usage: ./scripts/install-deps.sh [--torch]   (--torch adds python3-scipy, used only to
# regenerate tests/reference dumps; python3-torch is always installed: test_neox_load.py
# computes its independent reference forward with it)
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config clang-format
  clang libclang-rt-dev
  openmpi-bin libopenmpi-dev
  libhdf5-openmpi-dev hdf5-tools
  petsc-dev
  libscalapack-openmpi-dev
  libopenblas-dev liblapacke-dev
  libcjson-dev libyaml-dev
  python3-numpy python3-h5py python3-matplotlib python3-torch
  slurmctld slurmd slurm-client munge
)
[ "${1:-}" = "--torch" ] && pkgs+=(python3-scipy)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
