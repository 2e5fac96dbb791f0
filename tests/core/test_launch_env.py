"""Rank discovery from each launcher's environment (megatron/core/launch_env.py)."""

import pytest

from megatron.core.launch_env import detect_launcher, first_host, launch_variables, master_port, world_size_variable

SRUN = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
        "SLURM_STEP_NODELIST": "gpu[003-004]", "SLURM_JOB_NODELIST": "gpu[001-004]", "SLURM_JOB_ID": "77"}


def test_srun_step_maps_to_torch_variables():
    assert detect_launcher(SRUN) == "slurm"
    assert launch_variables(SRUN) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                      "MASTER_ADDR": "gpu003", "MASTER_PORT": "29500"}


def test_exported_master_and_torch_variables_win():
    env = dict(SRUN, MASTER_ADDR="10.0.0.9", MASTER_PORT="23456")
    assert launch_variables(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    # a launcher that already set RANK/WORLD_SIZE (torchrun inside srun) is left alone
    assert detect_launcher(dict(SRUN, RANK="0", WORLD_SIZE="2")) == "torch"
    assert launch_variables(dict(SRUN, RANK="0", WORLD_SIZE="2")) == {}


def test_job_nodelist_when_the_step_has_none():
    env = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_NODELIST"}
    assert launch_variables(env)["MASTER_ADDR"] == "gpu001"
    with pytest.raises(ValueError, match="export MASTER_ADDR"):
        launch_variables({k: v for k, v in env.items() if k != "SLURM_JOB_NODELIST"})


def test_a_batch_script_process_is_not_a_world():
    # sbatch's own shell (no srun) sees the job's SLURM_PROCID=0 and SLURM_NTASKS but is one process
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_NODELIST": "gpu[001-004]"}
    assert detect_launcher(batch) == "none" and launch_variables(batch) == {}


def test_mpi_wins_over_slurm_and_is_left_to_mpi4py():
    # mpirun inside an allocation: orted was started by srun, so SLURM_PROCID is the node's, not the rank's
    env = dict(SRUN, OMPI_COMM_WORLD_SIZE="8", OMPI_COMM_WORLD_RANK="3")
    assert detect_launcher(env) == "mpi" and launch_variables(env) == {}
    assert detect_launcher({"PMI_SIZE": "4", "PMI_RANK": "0"}) == "mpi"
    assert detect_launcher({}) == "none"


@pytest.mark.parametrize("nodelist,host", [("gpu[003-005,9],cpu1", "gpu003"), ("a1,a2", "a1"), ("n7", "n7"),
                                           ("rack[1-2]n[07-08]", "rack1n07"), ("x[10,2]", "x10")])
def test_first_host_of_a_hostlist(nodelist, host):
    assert first_host(nodelist) == host


def test_master_port_is_checked():
    assert master_port({}) == "29500" and master_port({"MASTER_PORT": "23456"}) == "23456"
    with pytest.raises(ValueError, match="MASTER_PORT"):
        master_port({"MASTER_PORT": "eth0"})


def test_world_size_is_known_before_the_world_is_joined():
    # the configuration is checked against the number of processes before rank discovery runs
    from megatron.config import parse_config

    flags = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
             "--max-position-embeddings", "32", "--micro-batch-size", "1", "--tensor-model-parallel-size", "2",
             "--train-iters", "1", "--lr", "1e-3"]
    assert world_size_variable({"OMPI_COMM_WORLD_SIZE": "4"}) == "OMPI_COMM_WORLD_SIZE"
    assert world_size_variable({"PMI_SIZE": "4"}) == "PMI_SIZE"
    assert world_size_variable(SRUN) == "SLURM_STEP_NUM_TASKS"
    assert world_size_variable({"RANK": "0", "WORLD_SIZE": "4"}) == "WORLD_SIZE" == world_size_variable({})
    with pytest.MonkeyPatch.context() as patch:
        for key in ("RANK", "WORLD_SIZE"):
            patch.delenv(key, raising=False)
        patch.setenv("OMPI_COMM_WORLD_SIZE", "4")
        assert parse_config(flags).parallel.world_size == 4
