#!/usr/bin/env bash
# Installs what multi-node launches need on a Debian/Ubuntu machine, and what tests/multinode uses to
# emulate two nodes on one: an MPI runtime (mpirun, libmpi for mpi4py), pdsh (the deepspeed launcher's default
# multi-node backend), an ssh server, and iproute2 (network namespaces). Safe to run again (a no-op then).
# Needs root for apt-get; as another user it only checks and says what is missing.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
PYTHON=${PYTHON:-python3}
PACKAGES=(openssh-server openssh-client pdsh openmpi-bin libopenmpi-dev iproute2 util-linux)
COMMANDS=(sshd ssh ssh-keygen pdsh mpirun orted ip nsenter unshare)

missing=()
for command in "${COMMANDS[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$command" >/dev/null || missing+=("$command")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup_multinode: missing ${missing[*]}; install (as root): apt-get install ${PACKAGES[*]}" >&2
    exit 1
  fi
  echo "setup_multinode: installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
fi

# mpi4py must load the system Open MPI. A wheel built against another MPI (or an sdist built before libmpi
# was installed) fails at `from mpi4py import MPI`; rebuilding from source against mpicc fixes both.
if ! "$PYTHON" -c "from mpi4py import MPI; MPI.Get_library_version()" >/dev/null 2>&1; then
  echo "setup_multinode: mpi4py cannot load the system MPI; rebuilding it from source against $(command -v mpicc)"
  MPICC=mpicc "$PYTHON" -m pip install --quiet --force-reinstall --no-deps --no-binary mpi4py --no-cache-dir \
    mpi4py
  "$PYTHON" -c "from mpi4py import MPI; print('setup_multinode: mpi4py uses', MPI.Get_library_version().split(',')[0])"
fi
