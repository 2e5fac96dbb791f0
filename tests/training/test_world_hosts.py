"""The rank -> host map printed at start, and the warning for a tensor-parallel group spanning hosts."""

from megatron.training.world_hosts import describe_hosts


def test_tp_inside_nodes_gives_one_line():
    hosts = ["node1", "node1", "node2", "node2"]
    assert describe_hosts(hosts, [[0, 1], [2, 3]]) == ["> hosts (2): node1 ranks 0-1, node2 ranks 2-3"]


def test_tp_group_across_hosts_is_warned():
    # torchrun on two nodes with one process each but TP=2: every layer's TP traffic crosses the network
    hosts = ["a", "b", "a", "b", "c"]
    lines = describe_hosts(hosts, [[0, 1], [2, 3]])
    assert lines[0] == "> hosts (3): a ranks 0,2, b ranks 1,3, c ranks 4"
    assert len(lines) == 3 and all("spans hosts ['a', 'b']" in line for line in lines[1:])
