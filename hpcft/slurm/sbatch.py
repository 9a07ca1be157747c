"""The ONE mapping from a resolved resources config to sbatch options.

`sbatch_options(resources, ...)` returns an ordered dict `{option: value}` (value None = a flag such as
`--exclusive`); `to_lines` renders it as `#SBATCH --key=value` lines (sbatch scripts, `hpcft render`) and
`to_argv` as an argv list (`sbatch --test-only`, the sbatch command line). The Slurm executor hands the same dict to
submitit. Every value is checked so that it can never leave its line or its argument: newlines, quotes,
backticks, `$(`/`${` and other shell metacharacters are refused with a ConfigError naming the key.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hpcft.errors import ConfigError
from hpcft.timefmt import format_duration, parse_duration

Options = Dict[str, Optional[str]]

PRIORITIES = ("low", "normal", "high")
# policy "qos": the priority level names a QoS (scripts/slurm-local creates low/normal/high). "normal" adds no
# option: the association's default QoS applies, so jobs of equal priority stay FIFO.
PRIORITY_QOS = {"low": "low", "normal": None, "high": "high"}
# policy "nice": a nice value (only an operator may set a negative one).
PRIORITY_NICE = {"low": 1000, "normal": None, "high": -1000}
POLICIES = ("qos", "nice", "none")
POLICY_ENV = "HPCFT_SLURM_PRIORITY_POLICY"

# Options that resources owns: `resources.extra` may not set them (one source of truth per option).
MANAGED = {
    "job-name": "name", "J": "name", "array": "sweep", "a": "sweep", "output": "output_dir", "o": "output_dir",
    "error": "output_dir", "e": "output_dir", "partition": "resources.partition", "p": "resources.partition",
    "account": "resources.account", "A": "resources.account", "qos": "resources.qos / resources.priority",
    "q": "resources.qos", "nice": "resources.priority", "priority": "resources.priority",
    "nodes": "resources.nodes", "N": "resources.nodes", "ntasks-per-node": "resources.tasks_per_node",
    "ntasks": "resources.nodes x resources.tasks_per_node", "n": "resources.tasks_per_node",
    "cpus-per-task": "resources.cpus_per_task", "c": "resources.cpus_per_task",
    "gres": "resources.gpus_per_node", "gpus-per-node": "resources.gpus_per_node", "gpus": "resources.gpus_per_node",
    "G": "resources.gpus_per_node", "mem": "resources.mem", "time": "resources.time", "t": "resources.time",
    "nodelist": "resources.nodelist", "w": "resources.nodelist", "reservation": "resources.reservation",
    "constraint": "resources.constraint", "C": "resources.constraint", "exclusive": "resources.exclusive",
    "signal": "resources.signal_grace", "requeue": "resources.on_timeout",
    "dependency": "after (hpcft submit --after JOB, or a pipeline's stages)", "d": "after (hpcft submit --after JOB)",
}

# The sbatch long options an ordinary user may set through `resources.extra`, each with what it does (sbatch 22.05
# man page). Not here: the managed ones above, those that change who the job runs as or with which privileges
# (REFUSED_EXTRA), and those that would change what hpcft runs (--wrap, --chdir, --export, --parsable, --wait ...).
EXTRA_ALLOWED: Dict[str, str] = {
    "acctg-freq": "accounting and profiling sampling intervals",
    "batch": "node features the batch step's node must have",
    "begin": "do not start before this time",
    "cluster-constraint": "federation: clusters with these features",
    "clusters": "submit to one of these clusters",
    "comment": "an arbitrary comment shown by squeue/sacct",
    "contiguous": "allocate contiguous nodes",
    "core-spec": "cores reserved for system use on each node",
    "cores-per-socket": "nodes with at least this many cores per socket",
    "cpu-freq": "CPU frequency / governor for the job's steps",
    "cpus-per-gpu": "CPUs per allocated GPU",
    "deadline": "remove the job if it cannot end before this time",
    "delay-boot": "do not reboot nodes for node features after this delay",
    "distribution": "task distribution across nodes and sockets",
    "exclude": "nodes the job must not run on",
    "extra-node-info": "sockets:cores:threads node restrictions",
    "gpu-bind": "bind tasks to GPUs",
    "gpu-freq": "GPU frequency",
    "gpus-per-socket": "GPUs per socket",
    "gpus-per-task": "GPUs per task",
    "gres-flags": "generic resource task binding options",
    "hint": "task binding hint (compute_bound, memory_bound, nomultithread)",
    "hold": "submit held (release with scontrol release)",
    "ignore-pbs": "ignore #PBS lines",
    "licenses": "licenses the job needs",
    "mail-type": "events that send mail (BEGIN, END, FAIL ...)",
    "mail-user": "who gets that mail",
    "mem-bind": "memory binding",
    "mem-per-cpu": "memory per CPU (instead of resources.mem)",
    "mem-per-gpu": "memory per GPU (instead of resources.mem)",
    "mincpus": "minimum CPUs per node",
    "network": "network/switch options",
    "no-kill": "do not kill the job when one of its nodes fails",
    "open-mode": "append or truncate the log files",
    "overcommit": "overcommit resources",
    "oversubscribe": "share nodes with other jobs",
    "power": "power management flags",
    "prefer": "preferred (not required) node features",
    "profile": "acct_gather profiling (energy, task, lustre, network)",
    "propagate": "resource limits propagated to the compute nodes",
    "sockets-per-node": "nodes with at least this many sockets",
    "spread-job": "spread the job over as many nodes as possible",
    "switches": "maximum number of leaf switches",
    "thread-spec": "threads reserved for system use on each node",
    "threads-per-core": "threads per core",
    "tmp": "minimum temporary disk space per node",
    "use-min-nodes": "prefer the smaller node count of a range",
    "wckey": "workload characterization key",
}

# Options `resources.extra` refuses with the reason (identity, privileges, or what runs).
REFUSED_EXTRA: Dict[str, str] = {
    "uid": "runs the job as another user (administrators only)",
    "gid": "runs the job with another group (administrators only)",
    "get-user-env": "loads another user's login environment (administrators only)",
    "reboot": "reboots the nodes (administrators only)",
    "mcs-label": "sets the job's security label",
    "container": "runs the job inside a container image instead of hpcft's worker",
    "bb": "burst-buffer directives run stage-in/stage-out commands",
    "bbf": "reads burst-buffer directives from a file",
    "export": "changes the environment hpcft's worker runs with",
    "export-file": "changes the environment hpcft's worker runs with",
    "chdir": "changes the directory the job runs in", "D": "changes the directory the job runs in",
    "wrap": "replaces the script hpcft runs",
    "input": "feeds a file to the job's stdin", "i": "feeds a file to the job's stdin",
    "parsable": "changes sbatch's output hpcft parses", "test-only": "submits nothing",
    "wait": "blocks the submission", "W": "blocks the submission",
    "no-requeue": "conflicts with resources.on_timeout",
    "kill-on-invalid-dep": "conflicts with hpcft's own end of a job whose parent failed (cause parent_failed)",
}

WARNING_SIGNAL = "USR1"  # hpcft.train.signals.WARNING_SIGNAL

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_MEM_RE = re.compile(r"^[0-9]+[KMGT]?$", re.IGNORECASE)
# Characters no value may hold: they could end the line or mean something to a shell.
_FORBIDDEN = re.compile(r"[\n\r\x00-\x1f\x7f'\"`\\;<>]|\$[({]|\$[A-Za-z_]")  # & | stay: constraint syntax
_JOB_NAME_KEEP = re.compile(r"[^A-Za-z0-9._+@:,=-]")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        value = obj.get(key, default)  # DictConfig
    except (AttributeError, TypeError):
        value = getattr(obj, key, default)
    return default if value is None else value


def check_value(key: str, value: Any) -> str:
    """`value` as a string that cannot break out of an `#SBATCH` line or an argv entry; ConfigError otherwise."""
    s = str(value)
    m = _FORBIDDEN.search(s)
    if m:
        bad = m.group(0)
        shown = {"\n": "a newline", "\r": "a carriage return"}.get(bad, repr(bad))
        raise ConfigError(f"{key}={s!r}: contains {shown}, which sbatch options may not hold; "
                          f"remove quotes, newlines, backticks, $, ;, <, > and backslashes from {key}")
    if not s.strip():
        raise ConfigError(f"{key}: empty value; set {key} or leave it out")
    return s


def safe_job_name(name: Any) -> str:
    """A job name reduced to characters that are safe everywhere (others become `_`), at most 100 long."""
    s = _JOB_NAME_KEEP.sub("_", str(name or "hpcft")).strip("_") or "hpcft"
    return s[:100]


def default_policy() -> str:
    return os.environ.get(POLICY_ENV, "qos")


def priority_options(level: str, policy: Optional[str] = None, qos: Optional[str] = None) -> Options:
    """The options that express a priority level under `policy` (an explicit QoS wins)."""
    policy = policy or default_policy()
    if policy not in POLICIES:
        raise ConfigError(f"{POLICY_ENV}={policy}: unknown priority policy; use qos|nice|none")
    if level not in PRIORITIES:
        raise ConfigError(f"resources.priority={level}: unknown priority; use low|normal|high")
    if qos:
        return {"qos": check_value("resources.qos", qos)}
    if policy == "qos" and PRIORITY_QOS[level]:
        return {"qos": PRIORITY_QOS[level]}
    if policy == "nice" and PRIORITY_NICE[level] is not None:
        return {"nice": str(PRIORITY_NICE[level])}
    return {}


def sbatch_options(
    resources: Any,
    *,
    job_name: Optional[str] = None,
    output: Optional[str] = None,
    error: Optional[str] = None,
    array: Optional[str] = None,
    priority_policy: Optional[str] = None,
    after: Optional[Sequence[str]] = None,
) -> Options:
    """sbatch options (long names without dashes, in a fixed order) for a resolved `resources` config.

    `resources` is a ResourcesConfig, a DictConfig of one, or a plain dict; missing keys take the schema defaults.
    `array` is an sbatch array spec such as "0-3%4". `after`: the Slurm job ids of the parents this job waits for
    (`--dependency=afterok:...`); when not given, a ledger row's resources carry them as `after` (written at
    hand-over by hpcft.jobs.chain.set_dependency). Raises ConfigError naming the key on a bad value.
    """
    r = resources
    opts = job_options(job_name=job_name, output=output, error=error, array=array)
    opts.update(dependency_option(after if after is not None else _get(r, "after", None) or ()))
    opts.update(_checked(r, ("partition", "account")))
    opts.update(priority_options(str(_get(r, "priority", "normal")), priority_policy, _get(r, "qos")))
    opts.update(size_options(r))
    opts["time"] = time_limit(r)
    opts.update(_checked(r, ("nodelist", "reservation", "constraint")))
    if _get(r, "exclusive", False):
        opts["exclusive"] = None
    opts.update(timeout_options(r))
    opts.update(extra_options(_get(r, "extra", None) or {}))
    return opts


_ARRAY_RE = re.compile(r"[0-9]+(-[0-9]+)?(:[0-9]+)?(,[0-9]+(-[0-9]+)?(:[0-9]+)?)*(%[0-9]+)?")


def job_options(job_name: Optional[str] = None, output: Optional[str] = None, error: Optional[str] = None,
                array: Optional[str] = None) -> Options:
    """What the job is called, which array it is, where its log goes (each only when given)."""
    opts: Options = {}
    if job_name is not None:
        opts["job-name"] = safe_job_name(job_name)
    if array is not None:
        if not _ARRAY_RE.fullmatch(str(array)):
            raise ConfigError(f"array={array!r}: not an sbatch array spec (e.g. 0-7%4)")
        opts["array"] = str(array)
    if output is not None:
        opts["output"] = check_value("output", output)
    if error is not None:
        opts["error"] = check_value("error", error)
    return opts


_SLURM_ID_RE = re.compile(r"[0-9]+(_[0-9]+)?")


def dependency_option(after: Sequence[str]) -> Options:
    """`--dependency=afterok:ID[:ID]` for the Slurm job ids a job waits for (an array task is `123_4`); {} for
    none. afterok: the job starts only when every parent ended with exit code 0; a parent that failed leaves it
    pending with reason DependencyNeverSatisfied, which `hpcft sync` ends (hpcft.jobs.chain.settle_dependants)."""
    ids = [str(a).strip() for a in after]
    for a in ids:
        if not _SLURM_ID_RE.fullmatch(a):
            raise ConfigError(f"after={a!r}: not a Slurm job id (e.g. 123 or 123_4)")
    return {"dependency": "afterok:" + ":".join(dict.fromkeys(ids))} if ids else {}


def _checked(r: Any, keys: Tuple[str, ...]) -> Options:
    """The free-form `resources.<key>` values that are set, each checked (`check_value`)."""
    return {key: check_value(f"resources.{key}", _get(r, key)) for key in keys if _get(r, key) is not None}


def _whole(r: Any, key: str, default: int, minimum: int = 1) -> int:
    """`resources.<key>` as a whole number >= minimum; ConfigError otherwise."""
    v = _get(r, key, default)
    try:
        if isinstance(v, bool):
            raise ValueError
        n = int(str(v).strip())
    except ValueError:
        raise ConfigError(f"resources.{key}={v!r}: not a whole number") from None
    if n < minimum:
        raise ConfigError(f"resources.{key}={n}: must be >= {minimum}")
    return n


def size_options(r: Any) -> Options:
    """The allocation's size: nodes, tasks per node, CPUs per task, GPUs per node (as `gpu_directive` says) and
    memory."""
    opts: Options = {"nodes": str(_whole(r, "nodes", 1)), "ntasks-per-node": str(_whole(r, "tasks_per_node", 1)),
                     "cpus-per-task": str(_whole(r, "cpus_per_task", 1))}
    gpus = _whole(r, "gpus_per_node", 0, minimum=0)
    if gpus:
        directive = _get(r, "gpu_directive", "gres")
        if directive == "gres":
            opts["gres"] = f"gpu:{gpus}"
        elif directive == "gpus-per-node":
            opts["gpus-per-node"] = str(gpus)
        else:
            raise ConfigError(f"resources.gpu_directive={directive}: unknown GPU directive; use gres|gpus-per-node")
    mem = _get(r, "mem")
    if mem is not None:
        mem = check_value("resources.mem", mem)
        if not _MEM_RE.match(mem):
            raise ConfigError(f"resources.mem={mem}: not a memory size; use e.g. 32G, 4000M or 4000")
        opts["mem"] = mem
    return opts


def time_limit(r: Any) -> str:
    """`resources.time` in Slurm's D-HH:MM:SS form."""
    t = _get(r, "time", "01:00:00")
    try:
        return format_duration(parse_duration(t))
    except ValueError:
        raise ConfigError(f"resources.time={t}: not a Slurm time limit; use HH:MM:SS, D-HH:MM:SS or minutes") from None


def timeout_options(r: Any) -> Options:
    """What happens at the time limit: the warning signal before it, and whether the job may be requeued."""
    opts: Options = {}
    grace = warning_grace(r)
    if grace:  # the time-limit warning, to every task of the job (not the batch shell): the trainer saves and stops
        opts["signal"] = f"{WARNING_SIGNAL}@{grace}"
    on_timeout = _get(r, "on_timeout", "expire")
    if on_timeout == "requeue":
        opts["requeue"] = None  # the worker requeues the job itself (`scontrol requeue`) after the warning save
    elif on_timeout != "expire":
        raise ConfigError(f"resources.on_timeout={on_timeout}: unknown; use expire|requeue")
    return opts


def extra_options(extra: Mapping[str, Any]) -> Options:
    """`resources.extra` as options, by name: each must be one of EXTRA_ALLOWED (a value of None, True or "" is a
    flag). ConfigError for an option that resources owns (MANAGED), one hpcft refuses (REFUSED_EXTRA) or an
    unknown one."""
    opts: Options = {}
    for k in sorted(extra):
        name = str(k).lstrip("-")
        where = f"resources.extra.{k}"
        check_extra_name(name, where)
        v = extra[k]
        opts[name] = None if v is None or v is True or v == "" else check_value(where, v)
    return opts


def check_extra_name(name: str, where: str) -> None:
    """ConfigError unless `--name` is an sbatch option that `resources.extra` may set."""
    if name in MANAGED:
        raise ConfigError(f"{where}: --{name} is set by {MANAGED[name]}; set it there instead")
    if name in REFUSED_EXTRA:
        raise ConfigError(f"{where}: --{name} {REFUSED_EXTRA[name]}; hpcft never passes it through "
                          f"(README: resources.extra)")
    if not _NAME_RE.match(name) or name not in EXTRA_ALLOWED:
        raise ConfigError(f"{where}: not an sbatch option hpcft passes through; "
                          f"use one of: {', '.join(sorted(EXTRA_ALLOWED))}")


DEFAULT_GRACE_S = 120


def warning_grace(resources: Any) -> int:
    """Seconds before the time limit at which the job gets the warning signal: `resources.signal_grace`, or when
    it is unset (null) 120 s but at most half the time limit. 0: no warning."""
    v = _get(resources, "signal_grace")
    if v is not None:
        return max(int(v), 0)
    try:
        limit = parse_duration(_get(resources, "time", "01:00:00"))
    except ValueError:
        return 0
    return min(DEFAULT_GRACE_S, limit // 2)


def _fmt(key: str, value: Optional[str]) -> str:
    if value is None:
        return f"--{key}"
    if any(c.isspace() for c in value):  # values hold no quotes (check_value), so quoting is safe
        return f'--{key}="{value}"'
    return f"--{key}={value}"


def to_lines(opts: Options) -> List[str]:
    """`#SBATCH --key=value` lines, in the dict's order."""
    return [f"#SBATCH {_fmt(k, v)}" for k, v in opts.items()]


def to_argv(opts: Options) -> List[str]:
    """`["--key=value", ...]` for an sbatch/srun command line (no shell involved: no quoting)."""
    return [f"--{k}" if v is None else f"--{k}={v}" for k, v in opts.items()]
