"""Which host runs which rank: one start-up line on multi-node runs, and a warning when a tensor-parallel
group spans hosts (TP exchanges activations in every layer, so it belongs inside a node; DP and PP cross nodes).
"""

import socket
from typing import Dict, List, Sequence


def _spans(ranks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    parts, start = [], None
    for i, rank in enumerate(ranks):
        if start is None:
            start = rank
        if i + 1 == len(ranks) or ranks[i + 1] != rank + 1:
            parts.append(str(start) if start == rank else f"{start}-{rank}")
            start = None
    return ",".join(parts)


def ranks_by_host(hostnames: Sequence[str]) -> Dict[str, List[int]]:
    """``hostnames[rank]`` -> {host: its ranks}, hosts in order of their first rank."""
    hosts: Dict[str, List[int]] = {}
    for rank, host in enumerate(hostnames):
        hosts.setdefault(host, []).append(rank)
    return hosts


def describe_hosts(hostnames: Sequence[str], tensor_parallel_groups: Sequence[Sequence[int]]) -> List[str]:
    """The lines to print: ``> hosts (2): node1 ranks 0-1, node2 ranks 2-3`` and one warning per TP group that
    spans hosts."""
    hosts = ranks_by_host(hostnames)
    lines = [f"> hosts ({len(hosts)}): " + ", ".join(f"{host} ranks {_spans(ranks)}" for host, ranks in hosts.items())]
    for group in tensor_parallel_groups:
        group_hosts = sorted({hostnames[rank] for rank in group})
        if len(group_hosts) > 1:
            lines.append(f"WARNING: tensor-parallel group {list(group)} spans hosts {group_hosts}: TP traffic in "
                         "every layer will cross the network; give each node a multiple of "
                         "--tensor-model-parallel-size processes (hostfile slots / --nproc_per_node)")
    return lines


def log_world_hosts(printer) -> None:
    """Gathers every rank's hostname (a collective: every rank calls it) and prints the map on rank 0."""
    from megatron.core import comm
    from megatron.core import parallel_state as ps

    hostnames = comm.all_gather_object(socket.gethostname())
    for line in describe_hosts(hostnames, ps.get_layout().tensor_parallel_groups()):
        printer(line)
