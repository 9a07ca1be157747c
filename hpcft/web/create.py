"""The Create form and Clone: fields generated from the config groups (conf/) and the schema (hpcft.config.schema),
their defaults from the composed config; the form becomes the same Hydra overrides the CLI takes, planned and
validated by hpcft.jobs.submit / hpcft.jobs.clone (the pre-queue check, hpcft.jobs.preflight), checked for memory
(hpcft.config.memory) and submitted by them. An error is the CLI's one line, shown beside the field it names. Beside
the Create button: the memory estimate and the queue prediction (`hpcft predict`), updated as fields change."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from typing import Any, Dict, List, Optional, Tuple

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from hpcft.errors import HpcftError
from hpcft.web.common import check_csrf, ctx, render

COMPOSE = threading.Lock()  # Hydra's compose uses process-global state: one composition at a time
GROUPS = ("model", "method", "data", "resources", "deepspeed")
# task type -> scenario -> methods: how the form's first two selects narrow the method group
TASKS = {"LLM": {"pretrain": ("pretrain",), "fine-tune": ("lora", "qlora", "full"),
                 "reward": ("reward", "reward_lora"), "RL": ("dpo", "grpo")},
         "text-to-image": {"fine-tune": ("t2i_lora",)}}
RESOURCE_FIELDS = ("nodes", "gpus_per_node", "gpu_mem", "cpus_per_task", "mem", "time", "partition", "nodelist",
                   "qos", "constraint", "priority")
CHOICES = {"executor": ("auto", "local", "slurm"), "access": ("none", "ro", "rw"),
           "resources.priority": ("low", "normal", "high")}
SECTIONS = ("job", "model", "data", "method", "training", "resources", "access and notifications")


@dataclasses.dataclass
class Field:
    key: str  # the override key: training.learning_rate
    section: str
    kind: str  # str | int | float | bool | choice
    value: str  # shown in the form
    default: str  # what the composed (or recorded) config has: an unchanged field is not sent
    choices: Tuple[str, ...] = ()
    optional: bool = False


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return ",".join(map(str, v))
    return str(v)


def _kind(f: dataclasses.Field, value: Any) -> str:
    t = str(f.type)
    for k in ("bool", "int", "float"):
        if re.search(rf"\b{k}\b", t):
            return k
    return "list" if "List" in t else "str"


def _sel(cfg, key: str) -> Any:
    """The value at `key`, None when unset or missing (a recorded config may lack whole sections)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except Exception:  # a MISSING section: omegaconf raises from inside (AttributeError, ConfigKeyError)
        return None


def _section_fields(cfg, section: str, prefix: str, schema_cls, skip=()) -> List[Field]:
    out = []
    for f in dataclasses.fields(schema_cls):
        if f.name in skip or f.metadata.get("secret") or "Dict" in str(f.type) or "Config" in str(f.type):
            continue
        v = _sel(cfg, f"{prefix}{f.name}")
        key = f"{prefix}{f.name}"
        out.append(Field(key, section, "choice" if key in CHOICES else _kind(f, v), _text(v), _text(v),
                         CHOICES.get(key, ()), "Optional" in str(f.type)))
    return out


def form_fields(cfg) -> List[Field]:
    """The form's fields for a composed (or recorded) config: job, model, data, the method's own parameters (and
    LoRA's), every training parameter, resources, access, notifications, publishing."""
    from hpcft.config import methods, schema

    def one(key, section, kind="str", choices=()):
        v = _text(_sel(cfg, key))
        return Field(key, section, "choice" if choices else kind, v, v, tuple(choices), True)

    spec = methods.METHOD_SPECS.get(str(_sel(cfg, "method.name")))
    fields = [one("name", "job"), one("description", "job"), one("output_dir", "job"),
              one("executor", "job", choices=CHOICES["executor"]), one("model.path", "model"),
              one("data.train", "data"), one("data.validation", "data"), one("data.test", "data"),
              one("data.format", "data", choices=tuple(schema.DATA_FORMATS))]
    if spec is not None:
        fields += _section_fields(cfg, "method", "method.", spec.schema, skip=("name", "lora", "quantization"))
    if _sel(cfg, "method.lora") is not None:
        fields += _section_fields(cfg, "method", "method.lora.", schema.LoraConfig, skip=("target_modules",))
    fields += _section_fields(cfg, "training", "training.", schema.TrainingConfig, skip=("resume_from", "report_to"))
    fields += [f for f in _section_fields(cfg, "resources", "resources.", schema.ResourcesConfig)
               if f.key.split(".")[1] in RESOURCE_FIELDS]
    fields += [one("access", "access and notifications", choices=CHOICES["access"]),
               one("notify.urls", "access and notifications", "list"),
               one("publish.auto", "access and notifications", "bool")]
    return fields


_PLAIN = {"int": r"-?\d+", "float": r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", "bool": r"true|false"}


def override(f: Field, value: str) -> Optional[str]:
    """`key=value` for a changed field (None when unchanged): numbers and booleans as typed when they look like one
    (else quoted, and the schema's type check names the key), text Hydra-quoted (stored literally), empty = null."""
    value = value.strip() if f.kind != "str" else value
    if value == f.default:
        return None
    if value == "" and (f.optional or f.kind in ("str", "list")):
        return f"{f.key}=null" if f.kind != "list" else f"{f.key}=[]"
    if f.kind in _PLAIN and re.fullmatch(_PLAIN[f.kind], value):
        return f"{f.key}={value}"
    if f.kind == "list":
        return f"{f.key}=[{','.join(json.dumps(x.strip()) for x in value.split(',') if x.strip())}]"
    return f"{f.key}={json.dumps(value, ensure_ascii=False)}"


def overrides(fields: List[Field], form) -> List[str]:
    from hpcft.jobs.submit import text_overrides

    out = []
    for f in fields:
        if f.key not in form:
            continue
        value = str(form.get(f.key))
        if f.key in ("name", "description"):  # one line of UTF-8, as `submit --name/--description` checks
            out += text_overrides(**{f.key: value}) if value != f.default else []
            continue
        ov = override(f, value)
        if ov:
            out.append(ov)
    return out


_KEY = re.compile(r"^\+{0,2}([A-Za-z_][\w]*(?:\.[\w]+)*)\s*[=:]")


def field_of(message: str, keys) -> str:
    """The form field an error names (its key at the start of the CLI's line: `training.learning_rate=-1.0: must be
    > 0`), or "" for an error of the whole form."""
    m = _KEY.match(message)
    if not m:
        return ""
    key = m.group(1)
    while key and key not in keys:
        key = key.rpartition(".")[0]
    return key


# ------------------------------------------------------------------------------------------------ composing the form

_DEFAULTS: Dict[Tuple[str, ...], Any] = {}


def group_overrides(q) -> List[str]:
    """The chosen config groups as overrides (an empty choice: the default, or the preset's)."""
    from hpcft.config.compose import group_options

    out = []
    if q.get("experiment"):
        if q["experiment"] not in group_options("experiment"):
            raise HpcftError(f"experiment={q['experiment']}: no such preset; use one of conf/experiment/")
        out.append(f"+experiment={q['experiment']}")
    for g in GROUPS:
        if q.get(g):
            out.append(f"{g}={q[g]}")
    return out


def composed(groups: List[str]):
    """The config the chosen groups compose to (cached: conf/ does not change under a running console)."""
    from hpcft.config.compose import compose

    key = tuple(groups)
    if key not in _DEFAULTS:
        with COMPOSE:
            _DEFAULTS[key] = compose(groups)
    return _DEFAULTS[key]


def group_choices(q) -> Dict[str, Any]:
    """The selects above the fields: task type, scenario, preset and each group, narrowed by the choices made."""
    from hpcft.config.compose import group_options

    task = q.get("task") if q.get("task") in TASKS else "LLM"
    scenario = q.get("scenario") if q.get("scenario") in TASKS[task] else ""
    methods = [m for m in group_options("method")
               if m in (TASKS[task][scenario] if scenario else sum(TASKS[task].values(), ()))]
    opts = {g: group_options(g) for g in GROUPS}
    opts["method"] = methods
    return {"task": task, "scenario": scenario, "tasks": list(TASKS), "scenarios": list(TASKS[task]),
            "experiments": group_options("experiment"), "experiment": q.get("experiment") or "",
            "options": opts, "chosen": {g: q.get(g) or "" for g in GROUPS}}


def _sections(fields: List[Field]) -> List[Tuple[str, List[Field]]]:
    return [(s, [f for f in fields if f.section == s]) for s in SECTIONS if any(f.section == s for f in fields)]


def create_page(request: Request, form=None, error: str = "", field: str = "", status: int = 200,
                clone_of=None, values=None):
    q = form if form is not None else request.query_params
    if clone_of is not None:
        fields, groups = form_fields(_recorded(clone_of, ctx(request))), None
    else:
        groups = group_choices(q)
        fields = form_fields(composed(group_overrides(q)))
    for f in fields:
        if values is not None and f.key in values:
            f.value = str(values.get(f.key))
    return render(request, "create.html", status=status, sections=_sections(fields), groups=groups, error=error,
                  error_field=field, clone_of=clone_of)


def _recorded(job, c):
    """A job's recorded config on its schema (hpcft.jobs.clone.on_schema); another user's secrets masked."""
    from hpcft.config.secrets import masked
    from hpcft.jobs.clone import on_schema

    from hpcft.rundir.secrets_file import restore

    return on_schema(job.id, restore(job.config, job.output_dir) if c.ledger.user == job.owner else masked(job.config))


def plan_of(request: Request, form, clone_of=None):
    """(plan, overrides) of a submitted form: hpcft.jobs.submit.plan (or hpcft.jobs.clone.plan for a clone), the
    validation `hpcft submit` runs before anything is created."""
    from hpcft.jobs import clone, submit

    c = ctx(request)
    if clone_of is not None:
        ovs = overrides(form_fields(_recorded(clone_of, c)), form)
        with COMPOSE:
            return clone.plan(clone_of, ovs, by=c.ledger.user), ovs
    groups = group_overrides(form)
    ovs = groups + overrides(form_fields(composed(groups)), form)
    with COMPOSE:
        return submit.plan(ovs), ovs


def _form_error(request: Request, form, e: HpcftError, clone_of=None):
    line = str(e).strip().splitlines()[0]
    keys = {f.key for f in form_fields(_recorded(clone_of, ctx(request)) if clone_of is not None
                                       else composed(group_overrides(form)))} | set(GROUPS)
    return create_page(request, form=form, error=line, field=field_of(line, keys), status=400, clone_of=clone_of,
                       values=form)


def submit_form(request: Request, form, clone_of=None):
    """Plan, check memory (refused unless `force`, as `hpcft submit`), create and hand over; the new job's id."""
    from hpcft.config.memory import check_submit
    from hpcft.jobs import clone, submit

    from hpcft.web.pages import refuse_in_team

    refuse_in_team(ctx(request).mode == "team", "clone" if clone_of is not None else "create")
    plan, ovs = plan_of(request, form, clone_of)
    check_submit(plan.configs, plan.overrides, form.get("force") == "1", lambda _line: None, False)
    c = ctx(request)
    if clone_of is not None:
        return clone.submit(c.ledger, clone_of, plan).id
    return submit.submit(plan, c.ledger)[0].id


async def create_post(request: Request):
    form = await check_csrf(request)
    clone_of = await run_in_threadpool(_clone_source, request)
    try:
        jid = await run_in_threadpool(submit_form, request, form, clone_of)
    except HpcftError as e:
        if type(e).__name__ == "AccessDenied":
            raise
        return await run_in_threadpool(_form_error, request, form, e, clone_of)
    return RedirectResponse(f"/job/{jid}", status_code=303)


def _clone_source(request: Request):
    from hpcft.ledger.access import authorize

    jid = request.path_params.get("job_id")
    return authorize(ctx(request).ledger, int(jid), "clone")[0] if jid is not None else None


def clone_page(request: Request):
    return create_page(request, clone_of=_clone_source(request))


def estimate(request: Request, form) -> Dict[str, Any]:
    """Beside the Create button: the memory estimate with its "fits with ..." suggestion (hpcft.config.memory) and
    the queue prediction (`hpcft predict`: sbatch --test-only) of the form as it stands."""
    from hpcft.config import memory
    from hpcft.jobs.executors.slurm import predict, prediction_line
    from hpcft.train.datacheck import split_lines

    out: Dict[str, Any] = {"memory": [], "data": [], "prediction": "", "error": "", "field": ""}
    clone_of = _clone_source(request)
    try:
        plan, _ = plan_of(request, form, clone_of)
    except HpcftError as e:
        line = str(e).strip().splitlines()[0]
        keys = {f.key for f in form_fields(_recorded(clone_of, ctx(request)) if clone_of is not None
                                           else composed(group_overrides(form)))} | set(GROUPS)
        return dict(out, error=line, field=field_of(line, keys))
    cfg = plan.configs[0]
    try:
        out["data"] = [x.lstrip("# ") for x in split_lines(cfg)[0]]  # records and format per split
    except HpcftError as e:
        line = str(e).strip().splitlines()[0]
        return dict(out, error=line, field=field_of(line, {"data.train", "data.validation", "data.test"}))
    est, why = memory.estimate_cfg(cfg)
    out["memory"] = memory.summary_lines(est, why)
    if est is not None and memory.refusal(est):
        out["memory"].append("would be refused: " + memory.refusal(est).rsplit("; or --force", 1)[0])
    if plan.executor == "slurm":
        try:
            out["prediction"] = prediction_line(predict(cfg))
        except HpcftError as e:  # advice: never blocks
            out["prediction"] = f"(no queue-wait prediction: {str(e).splitlines()[0]})"
    else:
        out["prediction"] = "starts now on this machine (local executor: no queue)"
    return out


async def estimate_api(request: Request):
    form = await check_csrf(request)
    return JSONResponse(await run_in_threadpool(estimate, request, form))


def routes() -> list:
    return [Route("/create", create_page), Route("/create", create_post, methods=["POST"]),
            Route("/job/{job_id:int}/clone", clone_page), Route("/job/{job_id:int}/clone", create_post, methods=["POST"]),
            Route("/api/estimate", estimate_api, methods=["POST"]),
            Route("/job/{job_id:int}/clone/estimate", estimate_api, methods=["POST"])]
