"""One typed aux-config model per engine: every endpoint setting that ferry reads, with its bounds.

``aux_config`` checks a user's keys against these at ``model add`` and says what is wrong; the data plane reads
the checked values."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ferry.control.engine_names import DEFAULT_MAX_BATCH_SIZE
from ferry.control.triton_config import TritonModelConfig


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, (int, str)) and not isinstance(value, bool) else value


def _comma_list(value: Any) -> Any:
    return [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


MAX_BATCH = 4096
"""Largest batch: far past where batching stops paying on a CPU, and what a GPU batch reasonably holds."""
MAX_DELAY_MS = 10_000.0
"""Longest batch delay: batching waits milliseconds, not seconds."""
MAX_TIMEOUT_MS = 3_600_000.0
"""Longest request timeout: an hour."""
MAX_INSTANCES = 256
MAX_THREADS = 1024
MAX_QUEUE = 1_000_000
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]
BatchSizes = Annotated[list[BatchSize], BeforeValidator(_listed)]
"""One batch size or a list of them."""
Providers = Annotated[list[str], BeforeValidator(_comma_list)]
"""A list of names or one comma-separated string."""
OptimizationLevel = Annotated[Literal["disable", "basic", "extended", "all"], BeforeValidator(_lower)]


class AuxBase(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


class QueuePolicy(AuxBase):
    """Triton's spelling of ferry's queue keys, under ``dynamic_batching.default_queue_policy``."""

    max_queue_size: Annotated[int, Field(ge=1, le=MAX_QUEUE)] | None = None
    """Same as ``max_queue_size``."""
    default_timeout_microseconds: Annotated[int, Field(ge=1, le=int(MAX_TIMEOUT_MS * 1000))] | None = None
    """Same as ``request_timeout_ms``, in microseconds."""


class QueueBatching(AuxBase):
    default_queue_policy: QueuePolicy | None = None


class DynamicBatching(QueueBatching):
    """Triton's spelling of ferry's batcher keys, under ``dynamic_batching``."""

    preferred_batch_size: BatchSizes | None = None
    """Same as ``preferred_batch_size``."""
    max_queue_delay_microseconds: Annotated[float, Field(ge=0, le=MAX_DELAY_MS * 1000)] | None = None
    """Same as ``max_queue_delay_ms``, in microseconds."""


class RayAux(AuxBase):
    """How ``ferry serve --ray`` runs this version's model deployment on Ray Serve (ferry/ray/)."""

    min_replicas: Annotated[int, Field(ge=0, le=MAX_INSTANCES)] = 1
    """Fewest replicas Ray Serve keeps running."""
    max_replicas: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] = 1
    """Most replicas Ray Serve's autoscaler may start."""
    target_ongoing_requests: Annotated[float, Field(gt=0, le=MAX_QUEUE)] = 2.0
    """Requests in flight per replica the autoscaler aims for: more per replica adds replicas."""
    max_ongoing_requests: Annotated[int, Field(ge=1, le=MAX_QUEUE)] = 32
    """Requests one replica takes at once (its batches are made from these)."""
    num_cpus: Annotated[float, Field(ge=0, le=MAX_THREADS)] = 1.0
    """CPUs Ray reserves for each replica."""
    num_gpus: Annotated[float, Field(ge=0, le=64)] = 0.0
    """GPUs Ray reserves for each replica."""
    upscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    """Seconds the load must call for more replicas before they start; unset: FERRY_RAY_UPSCALE_DELAY_S (10)."""
    downscale_delay_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    """Seconds the load must allow fewer replicas before they stop; unset: FERRY_RAY_DOWNSCALE_DELAY_S (120)."""
    colocate: bool = False
    """Run the model in the ingress replicas (no model deployment: one Ray call a request less; it scales
    with the ingress, and the keys above do not apply)."""
    bridge: bool = True
    """When the version is added or changed on a running service, serve it from the ingress replicas' own
    copy while its model deployment starts, then move it there (no bridge for versions that ask for GPUs)."""

    @model_validator(mode="after")
    def _bounds(self) -> RayAux:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}")
        return self


class CommonAux(AuxBase):
    """Keys of every engine: read by the runtime (serving/request/pipeline.py) and the reconciler."""

    ray: RayAux | None = None
    """This version's model deployment under ``ferry serve --ray`` (ray.min_replicas=1 ray.max_replicas=8 ...)."""

    warmup: Any = None
    """A request body sent once after the version loads, before it takes traffic."""
    inline_budget_ms: Annotated[float, Field(ge=0, le=1000)] = 1.0  # serving.inline.INLINE_BUDGET_S
    """Sync pre/post work measured under this many ms runs on the event loop; 0 never inlines."""
    max_queue_size: Annotated[int, Field(ge=1, le=MAX_QUEUE)] = 1024
    """Requests waiting for this endpoint beyond which it answers 503."""
    request_timeout_ms: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_MS)] | None = None
    """A request running longer is answered 504; unset: the service default (FERRY_REQUEST_TIMEOUT_S)."""
    openai: Literal["embeddings"] | None = None
    """``embeddings``: /serve/openai/v1/embeddings answers with this endpoint (its Preprocess takes
    ``{"text": ...}`` and returns ``{"embedding": [...]}``)."""


SPELLINGS = {
    "max_queue_size": "dynamic_batching.default_queue_policy.max_queue_size",
    "request_timeout_ms": "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "max_queue_delay_ms": "dynamic_batching.max_queue_delay_microseconds",
    "preferred_batch_size": "dynamic_batching.preferred_batch_size",
    "instances": "batch_instances",
}
"""ferry's key -> the other spelling of the same setting (Triton's, or an old name)."""


class QueueAux(CommonAux):
    """The custom and custom_async engines: the common keys only."""

    dynamic_batching: QueueBatching | None = None

    @model_validator(mode="after")
    def _one_spelling(self) -> QueueAux:
        both = [f"{a} and {b}" for a, b in SPELLINGS.items() if _given(self, a) and _given(self, b)]
        if both:
            raise ValueError(f"{'; '.join(both)} set the same thing: give one of them")
        return self


class BatchAux(QueueAux):
    """Engines the DynamicBatcher can wrap: the common keys plus the batcher's (serving/batching/batcher.py)."""

    max_batch_size: BatchSize | None = None
    """Most requests run as one model call; 1 turns batching off; unset: the engine's default
    (``engine_names.effective_max_batch_size``: 32 for the engines in BATCHED_BY_DEFAULT)."""
    max_queue_delay_ms: Annotated[float, Field(ge=0, le=MAX_DELAY_MS)] = 0.0
    """How long the first request of a batch waits for more."""
    preferred_batch_size: BatchSizes | None = None
    """Batch sizes (an int or a list) run as soon as they are reached."""
    pad_value: float = 0.0
    """Fills the ragged (-1) axes when requests of different lengths share a batch."""
    instances: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] | None = None
    """Batches that may run at once (model instances as threads); default one per core of the worker (and a
    spare in a single-worker server) for engines whose model call releases the GIL (onnxruntime,
    torchscript), else 1 (serving/batching/instances.py)."""
    batch_instances: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] | None = None
    """Same as ``instances``."""
    group_by_length: bool = False
    """Run a batch of ragged requests (-1 axes) as a few model calls of similar lengths where that saves
    padding (serving/batching/padding.py); off by default: MiniLM on 80 mixed sentences gained ~10 %
    (bench/ragged.sh)."""
    dynamic_batching: DynamicBatching | None = None

    @model_validator(mode="after")
    def _delay_fits(self) -> BatchAux:
        delay_ms, timeout_ms = _delay_ms(self), _timeout_ms(self)
        if delay_ms is not None and timeout_ms is not None and delay_ms >= timeout_ms:
            raise ValueError(
                f"max_queue_delay_ms={delay_ms:g} is not below the request timeout of {timeout_ms:g} ms, so "
                "requests waiting for a batch would time out: lower the delay or raise request_timeout_ms"
            )
        return self

    @model_validator(mode="after")
    def _preferred_fit(self) -> BatchAux:
        nested = self.dynamic_batching.preferred_batch_size if self.dynamic_batching else None
        cap = self.max_batch_size or DEFAULT_MAX_BATCH_SIZE
        too_big = [s for s in self.preferred_batch_size or nested or [] if s > cap]
        if too_big:
            raise ValueError(
                f"preferred batch sizes {too_big} exceed max_batch_size={cap}: raise max_batch_size or drop them"
            )
        return self


def _delay_ms(aux: BatchAux) -> float | None:
    nested = aux.dynamic_batching.max_queue_delay_microseconds if aux.dynamic_batching else None
    return aux.max_queue_delay_ms if _given(aux, "max_queue_delay_ms") else _scaled(nested, 1e-3)


def _timeout_ms(aux: QueueAux) -> float | None:
    policy = aux.dynamic_batching.default_queue_policy if aux.dynamic_batching else None
    nested = policy.default_timeout_microseconds if policy else None
    return aux.request_timeout_ms if aux.request_timeout_ms is not None else _scaled(nested, 1e-3)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


class ClassicAux(BatchAux):
    """The classic engines (sklearn, xgboost, lightgbm): batching keys plus compiling to ONNX."""

    compile: Literal["onnx"] | None = None
    """``onnx``: convert the model to an ONNX graph served by ONNX Runtime (engines/compiled.py)."""
    compile_tolerance: Annotated[float, Field(ge=0)] = 1e-4
    """Largest difference from the original's answers on sample rows at which the compiled model is served."""


class SklearnAux(ClassicAux):
    method: str = "predict"
    """The model method called: predict, predict_proba, transform, ..."""


class OnnxRuntimeAux(BatchAux):
    graph_optimization_level: OptimizationLevel = "all"
    """ONNX Runtime's graph optimisations."""
    intra_op_num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    """Threads inside one operator."""
    inter_op_num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    """Threads across operators."""
    providers: Providers | None = None
    """Execution providers in order (a list or "A,B"); unset: CUDA when present, then CPU."""


class TorchScriptAux(BatchAux):
    device: str | None = None
    """The torch device (cpu, cuda, cuda:1); unset: cuda when present, else cpu."""
    intra_op_num_threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 1
    """torch.set_num_threads for this model."""


class TritonAux(TritonModelConfig, CommonAux):
    """The triton engine: Triton's ModelConfig fields pass through, plus ferry's common keys."""

    triton_grpc_server: str | None = None
    """HOST:PORT of this endpoint's Triton server; unset: the service's (``ferry config --triton-grpc-server``)."""


DTYPE_ALIASES = {"half": "float16", "float": "float32", "fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
"""vLLM's and common spellings of the dtypes ``LLMAux.dtype`` takes."""


def _dtype(value: Any) -> Any:
    return DTYPE_ALIASES.get(value.lower(), value.lower()) if isinstance(value, str) else value


LLMDtype = Annotated[Literal["auto", "float32", "bfloat16", "float16", "float64"], BeforeValidator(_dtype)]


class LLMAux(CommonAux):
    """The llm engine (ferry's own, on transformers and torch) and the vllm engine (vLLM's, where it is installed;
    else served by the llm engine)."""

    dtype: LLMDtype = "auto"
    """The weights' dtype: auto (float32 on a CPU, bfloat16 on a GPU that has it), float32, bfloat16, float16 (on a
    CPU: bfloat16 where the CPU has it, else float32, with a warning), float64."""
    device: str | None = None
    """The torch device (cpu, cuda, cuda:1); unset: cuda when torch sees one, else cpu."""
    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] = 16
    """Sequences decoded together in one step; more wait."""
    max_waiting: Annotated[int, Field(ge=0, le=MAX_QUEUE)] = 256
    """Sequences that may wait for a slot; past them a request is answered 503 with Retry-After."""
    max_model_len: Annotated[int, Field(ge=2, le=10_000_000)] | None = None
    """Prompt and output tokens of one sequence at most; unset: the model's context length."""
    chat_template: str | None = None
    """A Jinja chat template replacing the tokenizer's (``--aux-config chat_template=FILE`` stores the file's text)."""
    kv_cache_tokens: Annotated[int, Field(ge=16)] | None = None
    """The KV budget in tokens (all running sequences and the prefix cache together); unset: kv_cache_memory_bytes,
    else 25 % of the memory free on the device when the model loads."""
    kv_cache_memory_bytes: Annotated[int, Field(ge=1)] | None = None
    """The KV budget in bytes (vLLM's name), where kv_cache_tokens is unset."""
    block_size: Annotated[int, Field(ge=1, le=1024)] = 16
    """Tokens per KV block: the unit of allocation and of prefix reuse."""
    enable_prefix_caching: bool = True
    """Reuse the KV blocks of a prompt prefix computed before (a shared system prompt, the turns of a chat)."""
    enable_chunked_prefill: bool = True
    """Split long prompts into chunks that share steps with decoding sequences; off: a prompt is prefilled whole
    in the step that admits it (running streams wait for it)."""
    max_num_batched_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    """Tokens one step computes at most (prefill chunks and decodes); unset: 512, or max_num_seqs if larger.
    While sequences decode, prefill chunks are kept to about one decoding step's time whatever this says."""
    packed_weights: bool = True
    """float32 on a CPU with MKL, max_num_seqs 4 to 32, where the copy takes at most 10 % of the memory available: a
    copy of the linear layers packed for steps of max_num_seqs sequences (full-load steps about 1.1x faster, the
    layers' memory again); false: no copy."""


AUX_MODELS: dict[str, type[AuxBase]] = {
    "sklearn": SklearnAux,
    "xgboost": ClassicAux,
    "lightgbm": ClassicAux,
    "onnxruntime": OnnxRuntimeAux,
    "torchscript": TorchScriptAux,
    "triton": TritonAux,
    "custom": QueueAux,
    "custom_async": QueueAux,
    "llm": LLMAux,
    "vllm": LLMAux,
}
"""Engine name -> the typed model of its aux config."""

BATCHABLE = tuple(engine for engine, model in AUX_MODELS.items() if issubclass(model, BatchAux))
"""Engines whose endpoints the DynamicBatcher may wrap."""


def _given(model: BaseModel, dotted: str) -> bool:
    node: Any = model
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in node.model_fields_set:
            return False
        node = getattr(node, part)
    return True
