import os
import subprocess

import pytest

from tests.multinode.cluster import NamespaceCluster, NamespaceError
from tests.training.corpus import write_synthetic_corpus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def cluster():
    """Two nodes with sshd, shared by every multi-node test; torn down even when a test fails.

    Never skips: a machine that cannot host the nodes fails here with the reason (CI is root on a machine
    that can)."""
    setup = subprocess.run(["bash", os.path.join(REPO, "tools", "setup_multinode.sh")], capture_output=True,
                           text=True, timeout=600)
    if setup.returncode != 0:
        pytest.fail(f"tools/setup_multinode.sh failed:\n{setup.stdout[-2000:]}\n{setup.stderr[-2000:]}")
    nodes = NamespaceCluster(num_nodes=2)
    try:
        nodes.start()
    except (NamespaceError, OSError) as error:
        pytest.fail(f"cannot create the two-node cluster (network namespaces + sshd; needs root and "
                    f"CAP_SYS_ADMIN/CAP_NET_ADMIN): {error}")
    try:
        yield nodes
    finally:
        nodes.close()
        # DeepSpeed's CPU allreduce buffers are named after MASTER_ADDR: remove those of runs addressed to
        # the nodes, never anyone else's.
        for name in os.listdir("/dev/shm"):
            if name.startswith("deepspeed_") and any(addr in name for addr in nodes.addresses.values()):
                os.unlink(os.path.join("/dev/shm", name))


@pytest.fixture(scope="session")
def multinode_corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("multinode_corpus")
    return {"prefix": write_synthetic_corpus(str(directory / "synthetic_text_document"), num_documents=200),
            "cache": str(directory / "cache")}
