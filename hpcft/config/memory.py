"""Will it fit? A per-GPU (per-process) memory estimate of a training job, from its config alone.

Pure on purpose (no torch, no transformers): `hpcft submit`, `submit --dry-run` and `predict` call it before
anything is created. The parameter counts come from the model's architecture: `model.arch` for a model built from a
config, the `config.json` of a local model directory, or `KNOWN_ARCHS` for the hub presets under conf/model/.

    estimate = weights + gradients + optimizer states + activations + logits   (bytes per GPU, at the peak)

- weights: parameters x bytes of `model.dtype`; 4-bit NF4 for QLoRA's quantized linear layers (0.5 byte + the
  quantization constants), the layers it leaves unquantized (embeddings, lm_head, norms) in fp32 as peft's
  `prepare_model_for_kbit_training` casts them; under DeepSpeed with bf16/fp16 the module is cast to 16 bits;
  ZeRO-3 divides them by the number of processes (+ the layers gathered for compute), `offload_params` keeps them
  in CPU memory. A frozen reference copy (full-weight DPO, GRPO with beta > 0) counts once more.
- gradients: trainable parameters x their bytes (LoRA adapters are fp32); ZeRO-2/3 divide by the processes.
- optimizer: AdamW's two moments (+ the fp32 master copy under DeepSpeed mixed precision: the ZeRO paper's
  12 bytes per parameter; without DeepSpeed the moments have the weights' dtype); ZeRO-1/2/3 divide by the
  processes; `offload_optimizer` keeps them (and the fp32 gradients) in CPU memory.
- activations: what autograd saves per token and layer (counted from the tensors a Llama-style block saves with
  sdpa attention: norms in fp32, q/k/v, attention output, the MLP's three intermediates, the inputs of the linear
  layers that need a weight gradient, LoRA's dropout copies) x tokens per micro-batch (batch x sequence; x2 for the
  chosen + rejected pairs of reward and DPO; for GRPO a prompt of at most `training.sequence_length` +
  `method.max_completion_length`). Under autocast (fp32 weights, bf16 compute) the 16-bit copies of the weights
  autocast keeps count here too. Gradient checkpointing keeps one
  hidden state per layer and token plus one layer's activations.
- logits: tokens x vocabulary x 14 bytes for the LM loss (the logits, their fp32 copy and log-softmax, and their
  gradients at the start of the backward pass), x 30 bytes in trl's DPO and GRPO losses (per-token log-probs of
  the whole sequence, temperature scaling, entropy, the reference's): measured, see benchmarks/bench_memory.py.
  With Liger's fused linear cross-entropy (`training.kernels`, causal-LM methods) no logits are held: only one
  chunk of them (Liger sizes a chunk at about batch x sequence x hidden elements), the gradient of the hidden
  states it computes in the forward pass and, when the LM head trains, its fp32 gradient.

Checked against measured peaks: tiny CPU runs of every LM method (tests/train/test_memory_peaks.py, peak RSS above the
process's baseline, within 25%) and the H200 figures of BENCHMARKS.md (`benchmarks/bench_memory.py` on a GPU
reports torch.cuda.max_memory_allocated beside the estimate). A GPU job's memory (`resources.gpu_mem`, GiB per GPU)
must hold the estimate plus `CUDA_RESERVE_GIB` (CUDA context, NCCL buffers, allocator fragmentation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from hpcft.config.kernels import CAUSAL_LM_METHODS, LIGER_ARCHS

GIB = 2**30
CUDA_RESERVE_GIB = 1.5  # per GPU, beyond what torch allocates: CUDA context, NCCL, cuBLAS workspace, fragmentation
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LOGIT_BYTES = 14  # per token x vocabulary entry in the LM loss (fp32 copy, log-softmax, their gradients)
TRL_LOGIT_BYTES = 30  # the same in trl's DPO and GRPO losses (per-token log-probs, temperature, reference, entropy)
NF4_BYTES = 0.5
QUANT_CONST_BYTES = {True: 0.127 / 8, False: 4 / 64}  # per parameter: double-quantized absmax, or an fp32 per 64
DROPOUT_FACTOR = 1.75  # LoRA dropout: its output and mask per targeted module's input element (measured)
REDUCE_BUCKET = 5e8  # elements: DeepSpeed's reduce_bucket_size default (the gradient buffer left on the GPU)
ZERO3_PREFETCH = 5e7  # parameters: DeepSpeed's stage3_prefetch_bucket_size default
BYTE_TOKENIZER_VOCAB = 260  # hpcft.train.tokenizer.byte_tokenizer: 4 specials + 256 bytes
ESTIMATED_METHODS = ("pretrain", "full", "lora", "qlora", "reward", "dpo", "grpo")  # not t2i_lora (diffusion)
FUSED_CE_METHODS = CAUSAL_LM_METHODS  # training.kernels=liger: no logits term


# ------------------------------------------------------------------------------------------------- architecture

@dataclass(frozen=True)
class Arch:
    """The numbers of a decoder-only transformer that memory depends on."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    vocab: int
    tied: bool
    q_dim: int  # per-token widths in attention: queries, keys, values (after any low-rank projection)
    k_dim: int
    v_dim: int
    o_in: int  # input width of the output projection
    mlp: int  # per-token MLP width computed (dense: intermediate_size; MoE: (top-k + shared) x expert width)
    latent: int = 0  # MLA: widths of the low-rank q/kv latents saved per token
    routed: int = 0  # MoE: routed experts (router logits per token), top-k
    top_k: int = 0
    params: int = 0  # all parameters (LM head included)
    embed: int = 0  # input embedding parameters
    head: int = 0  # LM head parameters (0 when tied)
    block_linear: int = 0  # parameters of the blocks' nn.Linear layers (what bitsandbytes quantizes)
    max_layer: int = 0  # parameters of the largest block (what ZeRO-3 gathers at once)
    # nn.Linear modules of the blocks: name -> (in_features, out_features, how many in the whole model)
    linears: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)

    @property
    def block_params(self) -> int:
        return self.params - self.embed - self.head


def _attn_bias(conf: Dict[str, Any]) -> Tuple[bool, bool]:
    """(q/k/v bias, o bias) as the transformers model builds them."""
    if conf.get("model_type") in ("qwen2", "qwen2_moe"):
        return True, False
    b = bool(conf.get("attention_bias", False))
    return b, b


class _Dims(NamedTuple):
    """The numbers every decoder-only config has."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int  # the dense MLP's intermediate size
    vocab: int
    tied: bool

    @classmethod
    def of(cls, conf: Dict[str, Any], vocab: Optional[int]) -> "_Dims":
        mt = str(conf.get("model_type", "llama"))
        h = int(conf["hidden_size"])
        n_layers = int(conf["num_hidden_layers"])
        a = int(conf["num_attention_heads"])
        kv = int(conf.get("num_key_value_heads") or a)
        d = int(conf.get("head_dim") or h // a)
        inter = int(conf["intermediate_size"])
        V = int(conf.get("vocab_size") or vocab or 32000)
        tied = bool(conf.get("tie_word_embeddings", mt in ("gemma", "gemma2", "gemma3_text")))
        return cls(mt, h, n_layers, a, kv, d, inter, V, tied)

    @property
    def norms(self) -> int:
        """The RMSNorm weights every such model has: two per layer and the final one."""
        return (2 * self.layers + 1) * self.hidden


class _Linears:
    """The blocks' nn.Linear modules as they are counted: name -> (in_features, out_features, how many)."""

    def __init__(self) -> None:
        self.shapes: Dict[str, Tuple[int, int, int]] = {}

    def add(self, name: str, i: int, o: int, n: int, bias: bool = False) -> int:
        """`n` more `name` layers (i -> o); returns their parameters."""
        if n <= 0:
            return 0
        prev = self.shapes.get(name)
        if prev and (prev[0], prev[1]) != (i, o):  # same name, other shape (dense vs shared-expert MLP)
            self.shapes[f"{name}#{i}x{o}"] = (i, o, n)
        else:
            self.shapes[name] = (i, o, n + (prev[2] if prev else 0))
        return n * (i * o + (o if bias else 0))

    def add_mlp(self, hidden: int, inter: int, n: int, bias: bool = False) -> int:
        """`n` gated MLPs (gate, up, down) of width `inter`; returns their parameters."""
        return (self.add("gate_proj", hidden, inter, n, bias) + self.add("up_proj", hidden, inter, n, bias)
                + self.add("down_proj", inter, hidden, n, bias))


def arch_from_config(conf: Dict[str, Any], vocab: Optional[int] = None) -> Arch:
    """An Arch from a transformers config dict (config.json or `model.arch`). Dense GQA decoders (llama, mistral,
    qwen2, qwen3, gemma, phi3, ...) and DeepSeek-V3 (MLA attention + MoE). Raises KeyError/ValueError when a number
    it needs is missing."""
    if "text_config" in conf and "hidden_size" not in conf:
        conf = {**conf["text_config"], "model_type": conf["text_config"].get("model_type", conf.get("model_type"))}
    d = _Dims.of(conf, vocab)
    lin = _Linears()
    if d.model_type == "deepseek_v3" or "kv_lora_rank" in conf:
        block, widths = _mla_moe_blocks(conf, d, lin)
    else:
        block, widths = _dense_blocks(conf, d, lin)
    embed = d.vocab * d.hidden
    head = 0 if d.tied else d.vocab * d.hidden
    return Arch(model_type=d.model_type, hidden=d.hidden, layers=d.layers, heads=d.heads, vocab=d.vocab, tied=d.tied,
                params=block + embed + head, embed=embed, head=head, linears=lin.shapes, **widths)


def _dense_blocks(conf: Dict[str, Any], d: _Dims, lin: _Linears) -> Tuple[int, Dict[str, int]]:
    """(parameters of all blocks, the Arch fields of a block) of a dense GQA decoder."""
    h, n, a, kv, hd = d.hidden, d.layers, d.heads, d.kv_heads, d.head_dim
    qkv_bias, o_bias = _attn_bias(conf)
    p = lin.add("q_proj", h, a * hd, n, qkv_bias) + lin.add("k_proj", h, kv * hd, n, qkv_bias)
    p += lin.add("v_proj", h, kv * hd, n, qkv_bias) + lin.add("o_proj", a * hd, h, n, o_bias)
    p += lin.add_mlp(h, d.inter, n, bool(conf.get("mlp_bias", False)))
    norms = d.norms
    if d.model_type in ("qwen3", "qwen3_moe"):  # per-head q/k norms
        norms += n * 2 * hd
    block = p + norms
    return block, dict(block_linear=sum(n * i * o for i, o, n in lin.shapes.values()), max_layer=block // n,
                       mlp=d.inter, q_dim=a * hd, k_dim=kv * hd, v_dim=kv * hd, o_in=a * hd)


def _mla_moe_blocks(conf: Dict[str, Any], d: _Dims, lin: _Linears) -> Tuple[int, Dict[str, int]]:
    """(parameters of all blocks, the Arch fields of a block) of a DeepSeek-V3 style model: MLA attention, the
    first `first_k_dense_replace` layers with a dense MLP, the others MoE."""
    attention, latent_norms, widths = _mla_attention(conf, d, lin)
    mlps, experts, moe_layers, mlp_widths = _moe_mlps(conf, d, lin)
    block = attention + mlps + experts + d.norms + latent_norms
    max_layer = (block - experts) // d.layers + experts // max(moe_layers, 1)
    return block, dict(block_linear=attention + mlps, max_layer=max_layer, **widths, **mlp_widths)


def _mla_attention(conf: Dict[str, Any], d: _Dims, lin: _Linears) -> Tuple[int, int, Dict[str, int]]:
    """Multi-head latent attention: (its nn.Linear parameters, its latents' norm parameters, its per-token
    widths). Queries through a low-rank latent when q_lora_rank is set, keys and values always."""
    h, n, a = d.hidden, d.layers, d.heads
    q_lora = int(conf.get("q_lora_rank") or 0)
    kv_lora = int(conf["kv_lora_rank"])
    nope, rope, vh = int(conf["qk_nope_head_dim"]), int(conf["qk_rope_head_dim"]), int(conf["v_head_dim"])
    qk = nope + rope
    if q_lora:
        p = lin.add("q_a_proj", h, q_lora, n) + lin.add("q_b_proj", q_lora, a * qk, n)
    else:
        p = lin.add("q_proj", h, a * qk, n)
    p += lin.add("kv_a_proj_with_mqa", h, kv_lora + rope, n) + lin.add("kv_b_proj", kv_lora, a * (nope + vh), n)
    p += lin.add("o_proj", a * vh, h, n)
    widths = dict(q_dim=a * qk, k_dim=a * qk, v_dim=a * vh, o_in=a * vh, latent=2 * (q_lora + kv_lora + rope))
    return p, n * (q_lora + kv_lora), widths


def _moe_mlps(conf: Dict[str, Any], d: _Dims, lin: _Linears) -> Tuple[int, int, int, Dict[str, int]]:
    """The MLPs of an MoE model: (nn.Linear parameters: the dense layers' MLPs and the shared experts; the routed
    experts' and routers' parameters; the number of MoE layers; the Arch fields mlp, routed, top_k)."""
    h, n, inter = d.hidden, d.layers, d.inter
    n_routed = int(conf.get("n_routed_experts") or 0)
    n_shared = int(conf.get("n_shared_experts") or 0)
    moe_i = int(conf.get("moe_intermediate_size") or inter)
    top_k = int(conf.get("num_experts_per_tok") or 0)
    dense = min(int(conf.get("first_k_dense_replace", 0)), n) if n_routed else n
    moe = n - dense
    shared = moe_i * n_shared
    p = lin.add_mlp(h, inter, dense) + lin.add_mlp(h, shared, moe if shared else 0)
    experts = moe * n_routed * 3 * h * moe_i  # fused expert tensors (nn.Parameter, not nn.Linear)
    router = moe * n_routed * h  # the router's weight (its score-correction bias is a buffer)
    mlp = inter if not moe else max(inter if dense else 0, (top_k + n_shared) * moe_i)
    return p, experts + router, moe, dict(mlp=mlp, routed=n_routed, top_k=top_k)


# The hub presets of conf/model (their config.json numbers), by hub id and by preset name: a job can be estimated
# on a login node that has no copy of the model.
_LLAMA3_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                  max_position_embeddings=131072)
_QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                  max_position_embeddings=32768)
_DEEPSEEK_V3 = dict(model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                    num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                    n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3, q_lora_rank=1536,
                    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, vocab_size=129280,
                    tie_word_embeddings=False, max_position_embeddings=163840)
KNOWN_ARCHS: Dict[str, Dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA3_8B, "meta-llama/Llama-3.1-8B": _LLAMA3_8B, "llama3-8b": _LLAMA3_8B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B, "Qwen/Qwen2.5-7B": _QWEN25_7B, "qwen2.5-7b": _QWEN25_7B,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": {**_QWEN25_7B, "max_position_embeddings": 131072},
    "deepseek-r1-distill-qwen-7b": {**_QWEN25_7B, "max_position_embeddings": 131072},
    "deepseek-ai/DeepSeek-V3": _DEEPSEEK_V3, "deepseek-ai/DeepSeek-R1": _DEEPSEEK_V3, "deepseek-v3": _DEEPSEEK_V3,
}


def _g(node: Any, key: str, default: Any = None) -> Any:
    """node[key] for dicts and DictConfigs alike."""
    if node is None:
        return default
    try:
        v = node.get(key, default)
    except AttributeError:
        v = getattr(node, key, default)
    return default if v is None else v


def _plain(x: Any) -> Any:
    if hasattr(x, "items"):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) or (hasattr(x, "__iter__") and not isinstance(x, (str, bytes))):
        return [_plain(v) for v in x]
    return x


def _tokenizer_vocab(model_cfg: Any) -> Optional[int]:
    tok = _g(model_cfg, "tokenizer") or _g(model_cfg, "path")
    if tok == "bytes":
        return BYTE_TOKENIZER_VOCAB
    f = Path(os.path.expanduser(str(tok))) / "tokenizer.json" if tok else None
    try:
        data = json.loads(f.read_text()) if f and f.is_file() else None
    except (OSError, ValueError):
        return None
    if not data:
        return None
    vocab = (data.get("model") or {}).get("vocab") or {}
    added = {t.get("id") for t in data.get("added_tokens") or []}
    return max(len(vocab), max(added, default=-1) + 1) or None


def _config_json(path: str, depth: int = 0) -> Tuple[Optional[Dict[str, Any]], str]:
    """(config.json of a local model directory, where it was read); a LoRA adapter directory: its base's."""
    d = Path(os.path.expanduser(path))
    try:
        if (d / "config.json").is_file():
            return json.loads((d / "config.json").read_text()), f"{path}/config.json"
        if (d / "adapter_config.json").is_file() and depth < 3:
            base = json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if base:
                conf, where = _config_json(str(base), depth + 1)
                if conf is None and base in KNOWN_ARCHS:
                    conf, where = KNOWN_ARCHS[base], f"hpcft.config.memory.KNOWN_ARCHS[{base!r}]"
                return conf, f"the adapter's base, {where}"
    except (OSError, ValueError):
        pass
    return None, ""


def model_arch(model_cfg: Any) -> Tuple[Optional[Arch], str]:
    """(Arch or None, where the numbers came from / why there are none)."""
    arch = _plain(_g(model_cfg, "arch", {}) or {})
    if arch.get("model_type") in ("stable_diffusion",):
        return None, "diffusion models are not estimated"
    vocab = _tokenizer_vocab(model_cfg)
    try:
        if _g(model_cfg, "source") == "config":
            return arch_from_config(arch, vocab), "model.arch"
        path = str(_g(model_cfg, "path", ""))
        conf, where = _config_json(path) if path else (None, "")
        if conf is not None:
            return arch_from_config(conf, vocab), where
        for key in (path, str(_g(model_cfg, "name", ""))):
            if key in KNOWN_ARCHS:
                return arch_from_config(KNOWN_ARCHS[key]), f"hpcft.config.memory.KNOWN_ARCHS[{key!r}]"
    except (KeyError, ValueError, TypeError) as e:
        return None, f"incomplete architecture ({type(e).__name__}: {e})"
    return None, f"no config.json at {path or '(no model.path)'} and not a known preset"


# ----------------------------------------------------------------------------------------------------- the job

@dataclass(frozen=True)
class Job:
    """What the estimate depends on, from the job config (`job_of(cfg)`); `replace()` it to try a change."""

    method: str
    lora_rank: int = 0  # 0: no adapters (all weights train)
    lora_dropout: float = 0.0
    lora_targets: Tuple[str, ...] = ()
    quantized: bool = False  # QLoRA: 4-bit base
    double_quant: bool = True
    compute_dtype: str = "float32"  # QLoRA compute dtype
    weight_dtype: str = "float32"  # model.dtype
    precision: str = "fp32"  # fp32 | bf16 | fp16 (resolved)
    zero_stage: Optional[int] = None  # None: no DeepSpeed
    offload_optimizer: bool = False
    offload_params: bool = False
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    batch_size: int = 4
    seq_len: int = 512
    gradient_checkpointing: bool = False
    reference: bool = False  # a frozen reference copy of the weights (full-weight DPO, GRPO beta > 0 without LoRA)
    completion_len: int = 0  # GRPO: completion tokens after the prompt
    gpu_mem_gib: Optional[float] = None  # resources.gpu_mem
    kernels: str = "none"  # training.kernels resolved (hpcft.config.kernels): liger | none

    @property
    def world(self) -> int:
        return max(1, self.nodes * self.tasks_per_node)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def lora(self) -> bool:
        return self.lora_rank > 0


def job_of(cfg: Any) -> Job:
    """The Job of a (validated) job config."""
    m, t, r, ds = cfg.method, cfg.training, cfg.resources, _g(cfg, "deepspeed")
    name = str(m.name)
    lo = _g(m, "lora")
    q = _g(m, "quantization") if name == "qlora" else None
    precision = str(_g(t, "precision", "fp32"))
    if precision == "auto":
        from hpcft.config.compose import auto_precision

        precision = auto_precision(int(_g(r, "gpus_per_node", 0)))
    stage = _g(ds, "stage")
    if stage is None and name in ("pretrain", "full", "lora", "qlora") and \
            int(_g(r, "nodes", 1)) * int(_g(r, "tasks_per_node", 1)) > 1:
        stage = 0  # the causal-LM trainer runs several processes under DeepSpeed (hpcft.train.distributed)
    gpu_mem = _g(r, "gpu_mem")
    return Job(
        method=name,
        lora_rank=int(_g(lo, "rank", 0)) if lo is not None else 0,
        lora_dropout=float(_g(lo, "dropout", 0.0)) if lo is not None else 0.0,
        lora_targets=tuple(str(x) for x in _g(lo, "target_modules", ())) if lo is not None else (),
        quantized=q is not None, double_quant=bool(_g(q, "double_quant", True)),
        compute_dtype=str(_g(q, "compute_dtype", "float32")),
        weight_dtype=str(_g(cfg.model, "dtype", "float32")), precision=precision,
        zero_stage=int(stage) if stage is not None else None,
        offload_optimizer=bool(_g(ds, "offload_optimizer", False)), offload_params=bool(_g(ds, "offload_params", False)),
        nodes=int(_g(r, "nodes", 1)), gpus_per_node=int(_g(r, "gpus_per_node", 0)),
        tasks_per_node=int(_g(r, "tasks_per_node", 1)),
        batch_size=int(_g(t, "batch_size", 4)), seq_len=int(_g(t, "sequence_length", 512)),
        gradient_checkpointing=bool(_g(t, "gradient_checkpointing", False)),
        reference=(name == "dpo" and lo is None) or (name == "grpo" and lo is None and float(_g(m, "beta", 0)) > 0),
        completion_len=int(_g(m, "max_completion_length", 0)) if name == "grpo" else 0,
        gpu_mem_gib=float(gpu_mem) if gpu_mem is not None else None,
    )


# --------------------------------------------------------------------------------------------------- estimate

@dataclass
class Estimate:
    """Bytes per process (per GPU on a GPU job) at the training peak."""

    job: Job
    arch: Arch
    source: str
    params: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    notes: List[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    @property
    def needs_gib(self) -> float:
        """GiB a GPU must have: the estimate + the CUDA reserve."""
        return self.total / GIB + (CUDA_RESERVE_GIB if self.job.gpus_per_node > 0 else 0.0)

    def parts(self) -> str:
        return ", ".join(f"{k} {_gib(v)}" for k, v in (
            ("weights", self.weights), ("gradients", self.gradients), ("optimizer", self.optimizer),
            ("activations", self.activations), ("logits", self.logits)))

    def fits(self) -> Optional[bool]:
        """True/False against resources.gpu_mem; None when unknown (no gpu_mem, or a CPU job)."""
        j = self.job
        if j.gpus_per_node <= 0 or j.gpu_mem_gib is None:
            return None
        return self.needs_gib <= j.gpu_mem_gib


def _gib(b: float) -> str:
    g = b / GIB
    return f"{g:.1f} GiB" if g >= 0.95 else f"{b / 2**20:.0f} MiB"


def _count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def lora_params(arch: Arch, targets: Tuple[str, ...], rank: int) -> Tuple[int, List[Tuple[int, int, int]]]:
    """(adapter parameters, [(in, out, count)] of the targeted modules): peft matches a target by the module
    name's last component."""
    hit = [(i, o, n) for name, (i, o, n) in arch.linears.items() if name.split("#")[0] in targets]
    if "lm_head" in targets and arch.head:
        hit.append((arch.hidden, arch.vocab, 1))
    return sum(n * rank * (i + o) for i, o, n in hit), hit


def _layer_activation_bytes(arch: Arch, job: Job, b: float, half_norm: bool, targets: set) -> float:
    """Bytes autograd saves per token in one block (sdpa attention: no sequence x sequence scores)."""
    h, a = arch.hidden, arch.heads
    full = not job.lora
    norm = 8 * h  # two RMSNorms keep their input in fp32 (+ the fp32 residual stream)
    attn = b * (arch.q_dim + arch.k_dim + arch.v_dim + arch.o_in) + 4 * a  # q, k, v (after rope), output, lse
    mlp = 3 * b * arch.mlp  # gate and up outputs, the activation
    latent = b * arch.latent + 4 * arch.routed + b * h * arch.top_k  # MLA latents, router logits, routed inputs
    if full:  # every linear needs its input for the weight gradient; the norms' normalized values
        saved_inputs = b * (h + arch.o_in + h + arch.mlp) + 2 * (4 if not half_norm else 2) * h
    else:
        saved_inputs = 0.0
        if targets & {"q_proj", "k_proj", "v_proj", "q_a_proj", "kv_a_proj_with_mqa"}:
            saved_inputs += b * h
        if "o_proj" in targets:
            saved_inputs += b * arch.o_in
        if targets & {"gate_proj", "up_proj"}:
            saved_inputs += b * h
        if "down_proj" in targets:
            saved_inputs += b * arch.mlp
        if job.quantized:  # bitsandbytes' 4-bit matmul keeps the input of every quantized layer
            saved_inputs += b * (h + arch.mlp)
    dropout = 0.0
    if job.lora and job.lora_dropout > 0:
        ins = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": arch.o_in, "gate_proj": h, "up_proj": h,
               "down_proj": arch.mlp, "q_a_proj": h, "kv_a_proj_with_mqa": h}
        # QLoRA's norms output fp32 (prepare_model_for_kbit_training casts their weights), so do the dropout copies
        db = 4 if job.quantized else b
        dropout = sum(DROPOUT_FACTOR * db * w for k, w in ins.items() if k in targets)
    return norm + attn + mlp + latent + saved_inputs + dropout


def _fused_ce_bytes(arch: Arch, job: Job, tokens: int, b: int) -> float:
    """Liger's fused linear cross-entropy at its peak (liger_kernel.ops.fused_linear_cross_entropy): one chunk of
    logits in the compute dtype (chunk = next power of 2 of tokens / ceil(vocab / hidden)), the hidden states'
    gradient (computed in the forward pass), the per-token losses, and the LM head's gradient when it trains."""
    inc = -(-arch.vocab // arch.hidden)
    chunk = min(1 << max(0, (-(-tokens // inc) - 1).bit_length()), tokens)
    head_grad = arch.vocab * arch.hidden * 4 if not job.lora and arch.head else 0
    return chunk * arch.vocab * b + tokens * (arch.hidden * b + 4) + head_grad


def estimate(arch: Arch, job: Job, source: str = "") -> Estimate:
    """The per-process memory estimate of `job` training a model of architecture `arch`."""
    notes: List[str] = []
    world = job.world
    half = job.precision in ("bf16", "fp16")
    ds = job.zero_stage is not None
    stage = job.zero_stage or 0
    wb = DTYPE_BYTES.get(job.weight_dtype, 4)
    if ds and half:
        wb = 2  # DeepSpeed casts the module to bf16/fp16
    reward = job.method == "reward"
    head = 0 if reward else arch.head
    params = arch.params - arch.head + head + (arch.hidden if reward else 0)  # reward: a 1-score head
    n_lora = lora_params(arch, job.lora_targets, job.lora_rank)[0] if job.lora else 0
    trainable = n_lora + (arch.hidden if reward else 0) if job.lora else params

    # weights
    if job.quantized:
        qb = NF4_BYTES + QUANT_CONST_BYTES[job.double_quant]
        weights = arch.block_linear * qb + (params - arch.block_linear) * 4
        notes.append("4-bit NF4 base; embeddings, head and norms in fp32")
    else:
        weights = params * wb
    if job.lora:
        weights += n_lora * 4  # adapters in fp32 (peft autocast_adapter_dtype)
    if stage == 3:  # + what is gathered for compute: the largest block (or embedding / head) and a prefetch bucket
        gathered = (max(arch.max_layer, arch.embed, head) + ZERO3_PREFETCH) * wb
        weights = (0.0 if job.offload_params else weights / world) + gathered
        notes.append(f"ZeRO-3: weights sharded over {world} processes" + (", offloaded to CPU" if job.offload_params
                                                                          else ""))
    if job.reference:
        weights += params * wb / (world if stage == 3 else 1)
        notes.append("a frozen reference copy")
    autocast_copies = 0.0
    if half and not ds and wb == 4 and not job.quantized:  # autocast keeps a 16-bit copy of every linear weight
        autocast_copies = (arch.block_linear + head) * 2

    # gradients and optimizer states (AdamW: two moments)
    tb = 4 if job.lora else wb
    if ds:
        grads = trainable * (2 if half else 4) / (world if stage >= 2 else 1)
        opt = trainable * (12 if half else 8 + 4) / (world if stage >= 1 else 1)  # fp32 master + 2 moments
    else:
        grads = trainable * tb
        opt = trainable * 2 * tb
    if job.offload_optimizer and ds:
        opt = 0.0
        grads = min(grads, REDUCE_BUCKET * (2 if half else 4))  # fp32 gradients go to CPU memory too
        notes.append("optimizer states in CPU memory")

    # activations
    b = 2 if (half or wb == 2 or (job.quantized and job.compute_dtype != "float32")) else 4
    half_norm = wb == 2 and not job.quantized
    targets = set(job.lora_targets) if job.lora else set()
    seqs = job.batch_size * (2 if job.method in ("reward", "dpo") else 1)  # chosen + rejected
    seq = job.seq_len + job.completion_len
    tokens = seqs * seq
    per_layer = _layer_activation_bytes(arch, job, b, half_norm, targets)
    final = 8 * arch.hidden + b * arch.hidden
    if job.gradient_checkpointing:
        acts = tokens * (arch.layers * b * arch.hidden + per_layer + final)
        notes.append("gradient checkpointing")
    else:
        acts = tokens * (arch.layers * per_layer + final)
    acts += autocast_copies
    if reward:  # a 1-score head: no vocabulary-sized logits
        logits = 0.0
    elif job.kernels == "liger" and job.method in FUSED_CE_METHODS:
        logits = _fused_ce_bytes(arch, job, tokens, b)
        notes.append("Liger fused linear cross-entropy: no logits held")
    else:
        logits = tokens * arch.vocab * (TRL_LOGIT_BYTES if job.method in ("dpo", "grpo") else LOGIT_BYTES)
    return Estimate(job=job, arch=arch, source=source, params=params, trainable=trainable, weights=weights,
                    gradients=grads, optimizer=opt, activations=acts, logits=logits, notes=notes)


def estimate_cfg(cfg: Any) -> Tuple[Optional[Estimate], str]:
    """(Estimate or None, source or why not) for a job config."""
    if str(cfg.method.name) not in ESTIMATED_METHODS:
        return None, f"method={cfg.method.name} is not estimated"
    arch, source = model_arch(cfg.model)
    if arch is None:
        return None, source
    job = job_of(cfg)
    choice = str(_g(cfg.training, "kernels", "auto"))
    if choice != "none":  # auto, or liger (refused by the checks where it cannot apply): what the job will run
        from hpcft.config import kernels as K

        why = K.liger_problem(job.method, job.gpus_per_node, arch.model_type, K.liger_installed())
        job = replace(job, kernels="liger" if why is None else "none")
    return estimate(arch, job, source), source


# ------------------------------------------------------------------------------------------ will it fit? advice

def _fits(arch: Arch, job: Job, **changes: Any) -> bool:
    return estimate(arch, replace(job, **changes)).needs_gib <= (job.gpu_mem_gib or 0)


GC = ("training.gradient_checkpointing=true", {"gradient_checkpointing": True})


def _with_gc(options: List[Tuple[str, Dict[str, Any]]], job: Job) -> List[Tuple[str, Dict[str, Any]]]:
    """Each option, then the same with gradient checkpointing (unless the job has it already)."""
    out = []
    for text, ch in options:
        out.append((text, ch))
        if not job.gradient_checkpointing:
            out.append((f"{text} {GC[0]}".strip(), {**ch, **GC[1]}))
    return out


def suggestion(arch: Arch, job: Job) -> str:
    """The smallest changes that make `job` fit, one of each kind: Liger's fused kernels, keeping the method on the
    GPUs asked for, another method on them, more GPUs."""
    fused: List[Tuple[str, Dict[str, Any]]] = []  # Liger's fused cross-entropy: no logits held, nothing lost
    if job.kernels != "liger" and job.method in FUSED_CE_METHODS and job.gpus_per_node > 0 \
            and arch.model_type in LIGER_ARCHS:
        fused.append(("training.kernels=liger", {"kernels": "liger"}))
    keep: List[Tuple[str, Dict[str, Any]]] = [("", {})]
    bs = job.batch_size
    while bs > 1:
        bs //= 2
        keep.append((f"training.batch_size={bs} training.gradient_accumulation=x{job.batch_size // bs}",
                     {"batch_size": bs}))
    if job.world > 1 and not job.quantized:
        keep += [(f"deepspeed=zero{st}", {"zero_stage": st}) for st in (1, 2, 3) if (job.zero_stage or 0) < st]
    if not job.quantized and not job.offload_params:
        keep.append(("deepspeed=zero3_offload", {"zero_stage": 3, "offload_params": True, "offload_optimizer": True}))
    seq = job.seq_len
    while seq > 1024:
        seq //= 2
        keep.append((f"training.sequence_length={seq}", {"seq_len": seq}))
    other: List[Tuple[str, Dict[str, Any]]] = []
    lora = {"lora_rank": job.lora_rank or 8, "lora_dropout": job.lora_dropout if job.lora else 0.05,
            "lora_targets": job.lora_targets or tuple(t for t in ("q_proj", "k_proj", "v_proj", "o_proj")
                                                      if t in arch.linears) or tuple(arch.linears)[:4]}
    if not job.lora and job.method in ("full", "pretrain"):
        other.append(("method=lora", lora))
    if job.method in ("full", "pretrain", "lora") and job.world == 1 and not job.quantized:
        other.append(("method=qlora", {**lora, "quantized": True, "zero_stage": None, "offload_params": False,
                                       "offload_optimizer": False,
                                       "compute_dtype": "bfloat16" if job.precision == "bf16" else "float32"}))
    more: List[Tuple[str, Dict[str, Any]]] = []
    if job.gpus_per_node > 0 and not job.quantized:
        for nodes in (1, 2, 4, 8, 16, 32, 64):
            gpn = max(8, job.gpus_per_node)
            if nodes * gpn > job.gpus:
                res = (f"resources.nodes={nodes} " if nodes > 1 else "") + \
                    f"resources.gpus_per_node={gpn} resources.tasks_per_node={gpn}"
                more.append((f"deepspeed=zero3 {res}", {"nodes": nodes, "gpus_per_node": gpn, "tasks_per_node": gpn,
                                                        "zero_stage": 3}))
    found = []
    for options in (fused, keep, other, more):
        for text, ch in _with_gc(options, job):
            if ch and _fits(arch, job, **ch):
                found.append(text)
                break
    return ", or ".join(found) if found else "none of the changes tried (see hpcft.config.memory.suggestion): " \
        "more or larger GPUs"


def refusal(est: Estimate) -> Optional[str]:
    """One line when the job cannot fit its GPUs (None when it fits or the GPU memory is unknown)."""
    if est.fits() is not False:
        return None
    j = est.job
    return (f"memory: needs ~{est.needs_gib:.0f} GiB/GPU ({est.parts()}, + {CUDA_RESERVE_GIB} GiB CUDA reserve); "
            f"asked {j.gpus}x{j.gpu_mem_gib:g} GiB (resources.gpu_mem); fits with {suggestion(est.arch, j)}; "
            "or --force to submit anyway")


def summary_lines(est: Optional[Estimate], why: str) -> List[str]:
    """What submit --dry-run and predict print."""
    if est is None:
        return [f"memory: not estimated ({why})"]
    j = est.job
    where = f"per GPU ({j.gpus} GPU{'s' if j.gpus != 1 else ''})" if j.gpus_per_node > 0 else "per process (CPU)"
    dist = f"deepspeed zero{j.zero_stage}" + (" + offload" if j.offload_params or j.offload_optimizer else "") \
        if j.zero_stage is not None else "no deepspeed"
    lines = [f"memory: ~{_gib(est.total)} {where}: {est.parts()}",
             f"        {_count(est.params)} params ({est.source}), {_count(est.trainable)} trainable, "
             f"{j.precision}, {dist}, batch {j.batch_size} x seq {j.seq_len + j.completion_len}"
             + (f"; {'; '.join(est.notes)}" if est.notes else "")]
    fit = est.fits()
    if fit is True:
        lines.append(f"        fits: needs ~{est.needs_gib:.1f} GiB of {j.gpu_mem_gib:g} GiB per GPU")
    elif fit is None and j.gpus_per_node > 0:
        lines.append("        GPU memory unknown: set resources.gpu_mem=GiB to have submit check the fit")
    return lines


def check_submit(configs: List[Any], points: List[List[str]], force: bool, echo, show: bool) -> None:
    """`hpcft submit`: the estimate of the first point (all its lines when `show`, as --dry-run; else its first line,
    for GPU jobs only), and a ConfigError (exit 2, nothing created) for a point that cannot fit its GPUs unless
    `force`, in which case a warning line says so."""
    from hpcft.errors import ConfigError

    for i, cfg in enumerate(configs):
        est, why = estimate_cfg(cfg)
        if i == 0 and (show or (est is not None and est.job.gpus_per_node > 0)):
            for line in summary_lines(est, why)[: None if show else 1]:
                echo(line)
        msg = refusal(est) if est is not None else None
        if msg is None:
            continue
        where = f"point {i} ({' '.join(points[i])}): " if len(configs) > 1 else ""
        if not force:
            raise ConfigError(where + msg)
        echo(f"warning: {where}{msg.rsplit('; or --force', 1)[0]} (--force: submitting anyway)")
