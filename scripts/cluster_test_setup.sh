#!/usr/bin/env bash
# Installs what `make cluster-test` (tests/test_cluster.py -m cluster) needs on a Debian/Ubuntu machine:
#   * openssh-server: the test runs its own sshd (throwaway host and user keys, loopback only) so that
#     `ray up` with the `local` provider can reach "nodes" 127.0.0.1 (head) and 127.0.0.2 (worker);
#   * rsync: the cluster launcher copies file_mounts and its bootstrap config with it;
#   * util-linux (unshare) and iproute2 (ip): the test isolates that cluster in its own PID, network and
#     mount namespaces, so `ray down` (which runs `ray stop`) can only see the test's own Ray processes.
# The test never enables or starts the system ssh service. Idempotent: exits at once when all are present.
# Needs root (or sudo) and Debian's apt mirror.
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -eq 0 ]; then
    echo "cluster_test_setup: sshd, rsync, unshare and ip are present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "cluster_test_setup: run as root (or install sudo)" >&2; exit 1; }
    SUDO="sudo"
fi
echo "cluster_test_setup: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit code 101 keeps the package scripts from starting a system sshd on port 22.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && $SUDO rm -f "$POLICY"' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "cluster_test_setup: done"
