"""pretrain_gpt_ds.py across two nodes (network namespaces with sshd, tests/multinode/cluster.py) under every
launcher a cluster user has: the `deepspeed` launcher over a hostfile with pdsh and with Open MPI, plain
`mpirun` (ranks discovered through mpi4py) and multi-node `torchrun` (c10d rendezvous).

Each layout puts TP inside a node (ranks 0-1 on one node, 2-3 on the other) and DP or PP across the nodes, and
each launch must reproduce, iteration by iteration, the losses of the same layout run on one node.
"""

import json
import os
import random
import re
import subprocess
import sys
import time

import pytest

from tests.distributed import run_on_ranks
from tests.multinode.cluster import INTERFACE, SUBNET
from tests.training.corpus import VOCAB

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERATIONS = 4
LAUNCH_TIMEOUT = 240
TOLERANCE = 1e-6  # fp32 losses of the same computation, only the transport differs
LAYOUTS = {
    # 4 ranks, rank order tp-dp-pp: TP pairs (0,1) and (2,3) sit on one node each.
    "tp2_dp2": ["--tensor-model-parallel-size", "2"],
    "tp2_pp2": ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"],
}
MPI_NETWORK = ["--mca", "btl_tcp_if_include", f"{SUBNET}.0/24", "--mca", "oob_tcp_if_include", f"{SUBNET}.0/24"]
RANK_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": REPO,
            # gloo picks its interface from the hostname unless told; name it, as on a real cluster
            "GLOO_SOCKET_IFNAME": INTERFACE,
            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
WALL_TIMES = {}


def _training_flags(layout, corpus, output_dir):
    return ["pretrain_gpt_ds.py", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--train-iters", str(ITERATIONS), "--lr", "3e-3", "--lr-warmup-iters", "1",
            "--log-interval", "1", "--eval-iters", "0", "--peak-tflops-per-device", "1", "--num-workers", "0", "--seed", "1234",
            "--data-path", corpus["prefix"], "--data-cache-path", corpus["cache"], "--split", "100,0,0",
            "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--output-dir", output_dir,
            "--metrics-file", os.path.join(output_dir, "metrics.jsonl"),
            "--deepspeed", "--deepspeed_config", os.path.join(REPO, "deepspeed_configs", "zero1.json")] \
        + LAYOUTS[layout]


def _port():
    return str(random.randint(20000, 40000))


def _losses(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == list(range(1, ITERATIONS + 1)), train
    return [r["loss"] for r in train]


def _check(results, what):
    for result in results:
        assert result.returncode == 0, (f"{what} exited {result.returncode}\n--- stdout\n{result.stdout[-5000:]}\n"
                                        f"--- stderr\n{result.stderr[-5000:]}")


def _launch(cluster, what, node_commands):
    """Runs one command per node at once, each bounded by LAUNCH_TIMEOUT; leaves no process behind."""
    start = time.perf_counter()
    env = dict(os.environ, **RANK_ENV)
    procs = [cluster.popen(node, command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for node, command in node_commands]
    results = []
    try:
        for proc in procs:
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, LAUNCH_TIMEOUT - (time.perf_counter() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                pytest.fail(f"{what} did not finish within {LAUNCH_TIMEOUT}s\n{stdout[-3000:]}\n{stderr[-3000:]}")
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cluster.kill_leftovers()  # ranks of a failed launch, orphaned under the sshds
    WALL_TIMES[what] = time.perf_counter() - start
    _check(results, what)
    return results


_REFERENCE = {}


def _pretrain_on_pool_rank(argv):
    from megatron.config import parse_config
    from megatron.core import comm
    from megatron.training.pretrain import pretrain

    pretrain(parse_config(argv, world_size=comm.get_world_size()), printer=lambda message: None)


def _reference_losses(layout, corpus, tmp_path_factory):
    """The same flags and layout on one host: pretrain() on the test suite's 4-rank gloo pool
    (tests/distributed.py), which other tests start anyway; it saves the reference ~4 process start-ups."""
    if layout not in _REFERENCE:
        output_dir = str(tmp_path_factory.mktemp(f"single_node_{layout}"))
        start = time.perf_counter()
        run_on_ranks(4, _pretrain_on_pool_rank, timeout=LAUNCH_TIMEOUT,
                     argv=_training_flags(layout, corpus, output_dir)[1:])
        WALL_TIMES[f"single node {layout}"] = time.perf_counter() - start
        _REFERENCE[layout] = _losses(output_dir)
    return _REFERENCE[layout]


def _host_map(output):
    """'> hosts (2): node1 ranks 0-1, node2 ranks 2-3' -> {'node1': '0-1', 'node2': '2-3'}"""
    match = re.search(r"> hosts \(\d+\): (.*)", output)
    assert match, "no '> hosts' line in the output"
    return dict(entry.split(" ranks ") for entry in match.group(1).strip().split(", "))


def _hostfile(cluster, directory):
    path = os.path.join(directory, "hostfile")
    with open(path, "w") as f:
        f.write("".join(f"{name} slots=2\n" for name in cluster.names))
    return path


def _deepspeed_env_file(directory):
    """What the deepspeed launcher exports to every node besides PYTHON*/UCX*/MLFLOW* (`.deepspeed_env`)."""
    path = os.path.join(directory, "deepspeed_env")
    with open(path, "w") as f:
        f.write("".join(f"{key}={RANK_ENV[key]}\n" for key in ("DS_ACCELERATOR", "OMP_NUM_THREADS",
                                                               "GLOO_SOCKET_IFNAME")))
    return path


def _deepspeed_launcher(cluster, layout, corpus, output_dir, launcher_flags):
    hostfile = _hostfile(cluster, output_dir)
    env_file = _deepspeed_env_file(output_dir)
    command = ["env", f"DS_ENV_FILE={env_file}", sys.executable, "-m", "deepspeed.launcher.runner",
               "--hostfile", hostfile, "--master_addr", cluster.addresses["node1"], "--master_port", _port()] \
        + launcher_flags
    return [("node1", command + _training_flags(layout, corpus, output_dir))]


def _pdsh(cluster, layout, corpus, output_dir):
    return _deepspeed_launcher(cluster, layout, corpus, output_dir, ["--launcher", "pdsh"])


def _openmpi(cluster, layout, corpus, output_dir):
    # DeepSpeed's generated mpirun line names eth0 unless btl_tcp_if_include is given: name the real network.
    mpi_args = " ".join(MPI_NETWORK + ["--bind-to", "none"])
    return _deepspeed_launcher(cluster, layout, corpus, output_dir,
                               ["--launcher", "openmpi", f"--launcher_args={mpi_args}"])


def _mpirun(cluster, layout, corpus, output_dir):
    forwarded = [arg for key in RANK_ENV for arg in ("-x", key)] + ["-x", "MASTER_PORT"]
    command = ["env", f"MASTER_PORT={_port()}", "mpirun", "-np", "4", "--host", "node1:2,node2:2",
               "--bind-to", "none"] + MPI_NETWORK + forwarded + [sys.executable, "-u"]
    return [("node1", command + _training_flags(layout, corpus, output_dir))]


def _torchrun(cluster, layout, corpus, output_dir):
    endpoint = f"{cluster.addresses['node1']}:{_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", cluster.tag]
    return [(node, command + _training_flags(layout, corpus, output_dir)) for node in cluster.names]


LAUNCHES = [("deepspeed_pdsh", _pdsh, "tp2_dp2"), ("deepspeed_openmpi", _openmpi, "tp2_pp2"),
            ("mpirun", _mpirun, "tp2_dp2"), ("torchrun", _torchrun, "tp2_dp2")]


@pytest.mark.parametrize("name,launch,layout", LAUNCHES, ids=[name for name, _, _ in LAUNCHES])
def test_two_node_launch_matches_single_node(name, launch, layout, cluster, multinode_corpus, tmp_path,
                                             tmp_path_factory):
    expected = _reference_losses(layout, multinode_corpus, tmp_path_factory)
    output_dir = str(tmp_path)
    results = _launch(cluster, f"{name} {layout}", launch(cluster, layout, multinode_corpus, output_dir))
    got = _losses(output_dir)
    worst = max(abs(a - b) for a, b in zip(got, expected))
    print(f"{name} {layout}: losses {got}, single node {expected}, max |diff| {worst:.2e}, "
          f"wall {WALL_TIMES[f'{name} {layout}']:.1f}s (single node {WALL_TIMES[f'single node {layout}']:.1f}s)")
    assert worst <= TOLERANCE, f"{name}: two-node losses {got} differ from single-node {expected}"
    # The ranks really ran on both hosts, a TP pair on each (rank 0 prints the map at start).
    output = "".join(r.stdout for r in results)
    assert _host_map(output) in ({"node1": "0-1", "node2": "2-3"}, {"node2": "0-1", "node1": "2-3"}), output[-3000:]


SRUN_TASK = """
import socket, torch
from megatron.core import comm
comm.init_distributed()
total = torch.tensor([float(comm.get_rank() + 1)])
comm.all_reduce(total)
print("task", comm.get_rank(), "of", comm.get_world_size(), "on", socket.gethostname(), "sum", total.item())
comm.destroy_world()
"""


def test_srun_variables_join_one_world_across_nodes(cluster):
    """srun gives each task SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID / SLURM_STEP_NODELIST and no
    RANK: comm.init_distributed must turn them into one world (master = the node list's first host). SLURM is
    not installed here, so each node's task gets the variables srun would give it (one task per node)."""
    port = _port()
    commands = [(node, ["env", f"SLURM_PROCID={i}", "SLURM_STEP_NUM_TASKS=2", "SLURM_NTASKS=2", "SLURM_LOCALID=0",
                        "SLURM_STEP_NODELIST=node[1-2]", f"MASTER_PORT={port}", sys.executable, "-c", SRUN_TASK])
                for i, node in enumerate(cluster.names)]
    results = _launch(cluster, "srun variables", commands)
    lines = sorted(line for r in results for line in r.stdout.splitlines() if line.startswith("task"))
    assert lines == ["task 0 of 2 on node1 sum 3.0", "task 1 of 2 on node2 sum 3.0"], lines
