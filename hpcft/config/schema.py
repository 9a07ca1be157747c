"""Structured-config schemas: one dataclass per config group, registered in Hydra's ConfigStore.

This module is the single source of truth for every option's name, type and default. The YAML files under
`conf/` pick values; `hpcft.jobs.preflight.validate` checks what types cannot express (ranges, files, combinations): the
common rules, then the rules of the chosen method (`hpcft.config.methods.METHOD_SPECS`). A leaf: it imports no
rule code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import MISSING


# A key whose value may carry credentials is marked secret: `field(..., metadata=SECRET)`. Its value stays with the
# job's owner: hpcft.config.secrets.masked (the one place that masks) replaces it with "***" wherever a config leaves
# the owner's hands (experiment trackers, model cards, other users' `hpcft show --config`).
SECRET: Dict[str, Any] = {"secret": True}


@dataclass
class ModelConfig:
    """What to train. `source=config` builds a random-init model from `arch` (tests, pretraining);
    `source=pretrained` loads `path` (a local directory, a hub id on a cluster, or `job:ID` for a previous run)."""

    name: str = MISSING
    source: str = "pretrained"  # config | pretrained
    path: Optional[str] = None
    tokenizer: Optional[str] = None  # "bytes" = built-in byte-level tokenizer; else a path or hub id (default: path)
    arch: Dict[str, Any] = field(default_factory=dict)  # transformers config kwargs, incl. model_type
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False
    # null: flash_attention_2 for a 16-bit model trained in 16 bits on a GPU with flash-attn, else sdpa
    # (hpcft.train.modeling.attn_implementation);
    # or eager | sdpa | flash_attention_2 | flash_attention_3 | flex_attention
    attn_implementation: Optional[str] = None
    parent_job: Optional[int] = None  # set by hpcft when model.path=job:ID (lineage); not for users
    asset: Optional[str] = None  # "NAME@VERSION", set by hpcft when model.path=asset:NAME[@V] (lineage); not for users
    asset_alias: Optional[str] = None  # "ALIAS" when model.path=asset:NAME@ALIAS (resolved to `asset`); not for users


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class QuantizationConfig:
    bits: int = 4
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True
    compute_dtype: str = "float32"  # bfloat16 on GPUs that have it


@dataclass
class MethodConfig:
    name: str = MISSING
    lora: Optional[LoraConfig] = None
    quantization: Optional[QuantizationConfig] = None


@dataclass
class RewardMethodConfig(MethodConfig):
    """Reward model (trl RewardTrainer) on {"prompt","chosen","rejected"} pairs. Owner: trainers/reward.py."""

    center_rewards_coefficient: Optional[float] = None


@dataclass
class DPOMethodConfig(MethodConfig):
    """Direct preference optimisation (trl DPOTrainer). Owner: trainers/dpo.py."""

    beta: float = 0.1
    loss_type: str = "sigmoid"  # any trl DPO loss_type; several comma-separated are summed


@dataclass
class GRPOMethodConfig(MethodConfig):
    """Group relative policy optimisation (trl GRPOTrainer) on {"prompt"} data. Owner: trainers/grpo.py."""

    beta: float = 0.0
    num_generations: int = 4
    max_completion_length: int = 32
    temperature: float = 1.0
    reward_functions: List[str] = field(default_factory=lambda: ["length"])
    reward_model: Optional[str] = None  # path or job:ID of a model trained by method=reward


@dataclass
class T2ILoraMethodConfig(MethodConfig):
    """LoRA on a text-to-image diffusion UNet (diffusers). Owner: trainers/text_to_image.py."""

    resolution: int = 32
    num_sample_images: int = 2
    sample_prompts: List[str] = field(default_factory=list)
    noise_offset: float = 0.0
    num_inference_steps: int = 20  # denoising steps of the sample images
    guidance_scale: float = 5.0


# The one table of data formats: `data.format` -> the fields of one record ("?" = optional). `auto` detects
# the format from the first record; `data.columns` maps other field names (hpcft.train.formats).
DATA_FORMATS: Dict[str, Tuple[str, ...]] = {
    "auto": (),
    "text": ("text",),
    "prompt_response": ("prompt", "response", "system?"),
    "alpaca": ("instruction", "input?", "output", "system?"),
    "messages": ("messages",),  # OpenAI style [{"role","content"}], system prompts and several turns
    "sharegpt": ("conversations", "system?"),  # [{"from": human|gpt|system|..., "value"}]
    "preference": ("prompt", "chosen", "rejected"),  # strings or messages
    "sharegpt_preference": ("conversations", "chosen", "rejected"),  # chosen/rejected: {"from": "gpt", "value"}
    "prompt": ("prompt",),
    "image_caption": ("image", "caption"),
}
SFT_FORMATS = ("prompt_response", "alpaca", "messages", "sharegpt")
PREFERENCE_FORMATS = ("preference", "sharegpt_preference")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO settings; `stage: null` runs without DeepSpeed. The JSON config is generated from these
    and the training section (batch size, accumulation, precision) so the two can never disagree."""

    name: str = "none"
    stage: Optional[int] = None  # 0 | 1 | 2 | 3
    offload_optimizer: bool = False
    offload_params: bool = False
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    gather_16bit_weights_on_model_save: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)  # merged last into the generated JSON


@dataclass
class ResourcesConfig:
    """What the job asks the scheduler for. `time` is the usage duration (wall time): past it the job is
    killed and recorded as expired."""

    name: str = MISSING
    nodes: int = 1
    gpus_per_node: int = 0
    gpu_mem: Optional[float] = None  # GiB per GPU; submit refuses a job whose memory estimate exceeds it (null: no check)
    tasks_per_node: int = 1  # processes per node (one per GPU on GPU nodes)
    cpus_per_task: int = 1
    mem: Optional[str] = None  # e.g. "32G" (per node)
    time: str = "01:00:00"  # [D-]HH:MM:SS, MM:SS or minutes
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    priority: str = "normal"  # low | normal | high
    nodelist: Optional[str] = None
    reservation: Optional[str] = None
    constraint: Optional[str] = None
    exclusive: bool = False
    gpu_directive: str = "gres"  # gres (--gres=gpu:N) | gpus-per-node (--gpus-per-node=N)
    # the time-limit warning: SIGUSR1 this many seconds before `time` (Slurm --signal=USR1@N; the local executor
    # likewise); the trainer saves a checkpoint at the next step boundary and stops. null (default): 120 s, at most
    # half the time limit; 0: no warning.
    signal_grace: Optional[int] = None
    on_timeout: str = "expire"  # expire (end `expired`, checkpoint saved) | requeue (continue from it, same job)
    max_requeues: int = 3  # on_timeout=requeue: how many times the job may be requeued at its time limit
    extra: Dict[str, str] = field(default_factory=dict)  # further sbatch options, validated against sbatch


@dataclass
class ColumnsConfig:
    """data.columns: which of your fields holds each of hpcft's (null: the field has hpcft's name), e.g.
    data.columns.prompt=question data.columns.response=answer."""

    text: Optional[str] = None
    prompt: Optional[str] = None
    response: Optional[str] = None
    instruction: Optional[str] = None
    input: Optional[str] = None
    output: Optional[str] = None
    system: Optional[str] = None
    messages: Optional[str] = None
    conversations: Optional[str] = None
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    image: Optional[str] = None
    caption: Optional[str] = None


@dataclass
class DataConfig:
    """Training / validation / test data (hpcft.train.sources): a JSONL, JSON-array, Parquet or CSV file, a
    directory written by `datasets.save_to_disk`, or hf:OWNER/NAME[:SPLIT] from the local Hugging Face datasets
    cache. Checked at submit: every split opens, its first records parse and have the format's fields."""

    name: str = MISSING
    train: str = MISSING
    validation: Optional[str] = None
    test: Optional[str] = None
    format: str = "auto"  # auto | one of DATA_FORMATS
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)  # your field names (hpcft.train.formats)
    # prompt_response / alpaca records: chat (the tokenizer's chat template) | alpaca | none | auto (chat when the
    # tokenizer has a chat template of its own, else alpaca for alpaca records and none for prompt/response)
    template: str = "auto"
    # pretraining: tokenize once into a memory-mapped token file shared by ranks and later runs; false: every rank
    # tokenizes into memory
    memmap: bool = True
    token_cache_dir: Optional[str] = None  # where token files live (default <HPCFT_HOME>/cache/tokens; shared)


@dataclass
class TrainingConfig:
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (None: run all epochs)
    learning_rate: float = 2e-4
    batch_size: int = 4  # per device
    gradient_accumulation: int = 1
    sequence_length: int = 512  # longer samples are truncated (and counted in the log)
    warmup_ratio: float = 0.0  # fraction of total steps with linear warmup
    lr_decay_ratio: float = 0.1  # cosine decay to learning_rate * ratio; 1.0 = constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 when resources.gpus_per_node > 0, else fp32; resolved at submit) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~30% slower
    save_strategy: str = "epoch"  # steps | epoch
    save_interval: int = 1  # every N steps or N epochs
    keep_checkpoints: str = "all"  # off | all | N
    # latest (default): continue from this run directory's newest checkpoint when there is one (a requeued or
    # resumed job), else start fresh; a checkpoint directory; null: always start from step 0
    resume_from: Optional[str] = "latest"
    seed: int = 42
    log_interval: int = 1
    num_workers: int = 0
    log_sample_ids: bool = False  # write the sample ids of every step into metrics.jsonl (resume checks)
    # several short samples per sequence of sequence_length tokens (causal-LM methods), each attending only to
    # itself with position ids restarting: fewer padding tokens
    packing: bool = False
    # fused kernels (hpcft.config.kernels): auto (Liger on a GPU job where liger-kernel is installed and covers the
    # model and method, else none) | liger (refused where it cannot apply) | none
    kernels: str = "auto"
    # experiment trackers fed the same series as metrics.jsonl and the resolved config, from rank 0
    # (hpcft.train.trackers): tensorboard | mlflow | wandb (offline unless WANDB_MODE says otherwise); [] = none
    report_to: List[str] = field(default_factory=list)
    # seconds between resource samples (cpu, memory, disk, network, GPU) of every rank into <run>/monitor/
    # (hpcft.rundir.monitor; `hpcft top`, `hpcft monitor`); 0 = off
    monitor_interval: float = 5.0


@dataclass
class PublishConfig:
    """Publish the final model into the model registry when the job succeeds (hpcft.registry.publish; `hpcft publish` does
    it by hand). A failed publish never changes the job's state: it is an event and an asset row `publish_failed`."""

    auto: bool = False
    name: Optional[str] = None  # the asset's name (default: the job's name, as a registry name)
    description: Optional[str] = None  # default: the job's description
    visibility: str = "project"  # project (the members of the job's project) | all (everyone)


NOTIFY_STATES = ("success", "error", "expired")  # the end states a notification can be sent for


@dataclass
class NotifyConfig:
    """A message when the job ends (hpcft.ledger.notify, through apprise: email, Slack, ntfy, webhooks, ...). Defaults for
    every job come from `$HPCFT_HOME/notify.yaml`; a key given on the command line wins. A stop you asked for is
    never notified; a receiver that is down never changes the job's state (it is a `notify_failed` event)."""

    # apprise URLs, e.g. ntfy://ntfy.sh/my-topic, json://host/path; they may carry credentials (mailto://me:PASS@...)
    urls: List[str] = field(default_factory=list, metadata=SECRET)
    on: List[str] = field(default_factory=lambda: list(NOTIFY_STATES))  # among success | error | expired
    timeout: int = 10  # seconds the sending process waits for the receivers at most


@dataclass
class JobConfig:
    name: str = "${model.name}-${method.name}"
    description: str = ""
    project: str = "default"
    access: str = "none"  # what the other members of the project may do with this job: none | ro | rw
    executor: str = "auto"  # auto | local | slurm
    output_dir: Optional[str] = None  # default: <HPCFT_HOME>/runs/<job id>-<name>
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    resources: ResourcesConfig = MISSING
    data: DataConfig = MISSING
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    # ledger job ids this job waits for: it starts when all ended in success (Slurm --dependency=afterok; the local
    # executor waits too), and ends `stopped` (cause parent_failed) when one did not (hpcft.jobs.chain)
    after: List[int] = field(default_factory=list)
    # {id, name, stage[, chain]}: the pipeline this job is a stage of (`hpcft pipeline submit`); set by hpcft
    pipeline: Dict[str, Any] = field(default_factory=dict)


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="hpcft_schema", node=JobConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="method", name="method_schema", node=MethodConfig)
    cs.store(group="method", name="reward_schema", node=RewardMethodConfig)
    cs.store(group="method", name="dpo_schema", node=DPOMethodConfig)
    cs.store(group="method", name="grpo_schema", node=GRPOMethodConfig)
    cs.store(group="method", name="t2i_lora_schema", node=T2ILoraMethodConfig)
    cs.store(group="deepspeed", name="deepspeed_schema", node=DeepSpeedConfig)
    cs.store(group="resources", name="resources_schema", node=ResourcesConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
