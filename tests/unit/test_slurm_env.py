"""The one Slurm -> torch.distributed mapping (hpcft.slurm.env), a pure function of the environment."""

from hpcft.slurm import env as E


def test_dist_env_from_a_two_node_job():
    environ = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2(x2)",
               "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    d = E.dist_env(environ, expand=None)
    assert d == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                 "MASTER_ADDR": "gpu07", "MASTER_PORT": str(E.master_port("1234"))}
    # every task of the job derives the same rendezvous
    other = dict(environ, SLURM_PROCID="0", SLURM_LOCALID="0")
    assert E.dist_env(other, expand=None)["MASTER_PORT"] == d["MASTER_PORT"]


def test_array_tasks_get_distinct_ports_and_explicit_values_win():
    a = E.dist_env({"SLURM_ARRAY_JOB_ID": "50", "SLURM_ARRAY_TASK_ID": "0", "SLURM_JOB_ID": "51"}, expand=None)
    b = E.dist_env({"SLURM_ARRAY_JOB_ID": "50", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "52"}, expand=None)
    assert a["MASTER_PORT"] != b["MASTER_PORT"]
    assert 20000 <= int(a["MASTER_PORT"]) < 40000
    c = E.dist_env({"SLURM_JOB_ID": "9", "MASTER_ADDR": "head", "MASTER_PORT": "29500"}, expand=None)
    assert (c["MASTER_ADDR"], c["MASTER_PORT"]) == ("head", "29500")


def test_first_host_and_expand_hook():
    assert E.first_host("n[1-2],gpu3") == "n1"
    assert E.first_host("gpu3,n[1-2]") == "gpu3"
    assert E.first_host("node[003,007]") == "node003"
    assert E.first_host("n[1-2]", expand=lambda _: ["real-host"]) == "real-host"
    assert E.first_host("n[1-2]", expand=lambda _: []) == "n1"  # scontrol not answering


def test_restart_count_and_ids():
    assert E.restart_count({}) == 0 and E.restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    assert E.slurm_ids({"SLURM_JOB_ID": "7"}) == {"slurm_job_id": "7"}
    assert E.slurm_ids({"SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "8"}) == {
        "slurm_job_id": "5_3", "array_job_id": "5", "array_task_id": 3}


def test_run_context_reads_the_same_mapping(monkeypatch):
    from hpcft.train.context import RunContext

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    ctx = RunContext.from_env("/tmp/x")
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (1, 2, 0)
