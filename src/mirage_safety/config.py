"""The one typed configuration: ``params.yaml`` parsed once into pydantic models.

Every stage receives only its slice (``cfg.data``, ``cfg.train``...).  Unknown keys and
wrong types fail before any work with the full key path and the expected type.

Profiles: ``params.yaml`` holds the defaults at top level plus ``profiles.<name>``
override trees.  The active profile is ``profile:`` in the file, or the environment
variable ``MIRAGE_PROFILE`` (so CI and tests select ``smoke`` without editing the file;
under DVC use ``dvc exp run -S profile=smoke`` so the choice is part of the stage params).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILE_ENV = "MIRAGE_PROFILE"
NO_TRACK_ENV = "MIRAGE_NO_TRACK"  # "1": stages log nothing to MLflow (tests, dry runs)
#: where answers of OpenAI-compatible endpoints are cached (teacher and judges share it)
ENDPOINT_CACHE = ".cache/openai"
DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file that cannot be used; the message names every offending key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --------------------------------------------------------------------------- data
LabelStyle = Literal["cot", "refusal", "text_only", "policy"]


class WorldConfig(_Model):
    """The embedded synthetic MIS world.  Its train records carry the world's own ``cot``
    labels (as the MIS release carries its teacher's); the ``label`` stage relabels them."""

    image_size: int = Field(64, ge=16, le=512)
    n_train: int = Field(3000, ge=1)
    n_test_per_split: int = Field(200, ge=1)
    n_general_train: int = Field(24000, ge=0)
    n_general_test: int = Field(300, ge=1)
    n_instruct: int = Field(2000, ge=0)
    benign_fraction: float = Field(0.35, ge=0.0, le=1.0)
    test_pair_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    jitter: float = Field(0.5, ge=0.0, le=2.0)


class DatasetLocation(_Model):
    """Where a real dataset is: a local directory, or a Hub dataset id (+ revision).

    Hub snapshots are downloaded as plain files into ``download_dir`` (default
    ``$HF_HOME/mirage-datasets/<owner>--<name>``) and then read exactly like ``local_dir``.
    """

    local_dir: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    download_dir: str | None = None

    @model_validator(mode="after")
    def _one_location(self) -> DatasetLocation:
        if self.local_dir and self.hub_id:
            raise ValueError("set either local_dir or hub_id, not both")
        return self


class HubDataConfig(DatasetLocation):
    """A real safety dataset in its public layout (``data.mis``, ``data.msr_align``).

    Public releases: MIS is ``hub_id: Tuwhy/MIS_Train`` with ``test_hub_id: Tuwhy/MIS_Test``
    (train and test are separate Hub datasets); MSR-Align is ``hub_id: Leigest/MSR-Align``.
    Accepted layouts and field names: :mod:`mirage_safety.data.importers`.
    """

    # a second Hub dataset holding the test split (MIS); it lands in <root>/mis_test/
    test_hub_id: str | None = None
    test_revision: str | None = None
    # train file relative to the dataset root; None = the source's default
    # (MIS: mis_train.json; MSR-Align: auto-detected, see importers)
    train_file: str | None = None
    # extra source category -> MIS category, MIS sub-category, or "General"; overrides
    # the importer's built-in table (keys match case- and punctuation-insensitively)
    category_map: dict[str, str] = {}
    # source categories whose records are dropped (counted in a warning), e.g. a policy
    # area with no MIS counterpart
    skip_categories: list[str] = []

    @model_validator(mode="after")
    def _test_needs_hub(self) -> HubDataConfig:
        if (self.test_hub_id or self.test_revision) and not self.hub_id:
            raise ValueError(
                "test_hub_id / test_revision need hub_id (with local_dir, put "
                "the test files in the same directory)"
            )
        return self


class GeneralDataConfig(DatasetLocation):
    """``data.general``: a general multi-image instruction set in the LLaVA / ShareGPT layout
    (e.g. M4-Instruct, ``hub_id: lmms-lab/M4-Instruct-Data``) imported into
    ``data/general/train.json``, the general share ``train.general_ratio`` mixes in.

    Real sources only: the embedded world writes its own general split.  Layout and
    checks: :func:`mirage_safety.data.importers.load_general`.
    """

    # the JSON / JSON Lines file relative to the root; None = m4_instruct_annotations.json
    # if present, else the only .json/.jsonl file in the root
    file: str | None = None
    # records drawn (seeded, without replacement) from the file; -1 = all of them
    max_samples: int = Field(-1, ge=-1)
    seed: int = 1234

    @model_validator(mode="after")
    def _located(self) -> GeneralDataConfig:
        if not (self.local_dir or self.hub_id):
            raise ValueError(
                "set local_dir (a copy of the release) or hub_id (a Hub dataset "
                "id); remove data.general for no general import"
            )
        if self.max_samples == 0:
            raise ValueError(
                "max_samples 0 imports nothing: use -1 (all) or a positive "
                "count, or remove data.general"
            )
        return self


class DataConfig(_Model):
    source: Literal["world", "mis", "msr_align"] = "world"
    seed: int = 1234
    world: WorldConfig = WorldConfig()
    mis: HubDataConfig = HubDataConfig()
    msr_align: HubDataConfig = HubDataConfig()
    # general instruction data for a real source's data/general/train.json; None = none
    # (the file stays empty, as train.general_ratio: 0 expects)
    general: GeneralDataConfig | None = None
    max_errors_shown: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _real_source_located(self) -> DataConfig:
        if self.source in ("mis", "msr_align"):
            slice_ = getattr(self, self.source)
            if not (slice_.local_dir or slice_.hub_id):
                raise ValueError(
                    f"data.source is {self.source!r} but neither "
                    f"data.{self.source}.local_dir nor data.{self.source}.hub_id "
                    "is set"
                )
        if self.source == "world" and self.general is not None:
            # refused rather than ignored: a configured import that silently does nothing
            # would train on a different mix than the params say
            raise ValueError(
                "data.general imports general data for a real source "
                "(data.source: mis | msr_align); the embedded world writes its "
                "own general split (data.world.n_general_train): remove "
                "data.general or change data.source"
            )
        return self


# --------------------------------------------------------------------------- base
class BuiltinModelConfig(_Model):
    """The embedded tiny LLaVA-architecture VLM and its pre-training on general data."""

    vision_hidden: int = Field(64, ge=8)
    vision_layers: int = Field(2, ge=1)
    vision_heads: int = Field(4, ge=1)
    patch_size: int = Field(16, ge=2)
    text_hidden: int = Field(128, ge=8)
    text_layers: int = Field(2, ge=1)
    text_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    vocab_size: int = Field(2048, ge=64)
    pretrain_steps: int = Field(1500, ge=0)
    pretrain_batch_size: int = Field(32, ge=1)
    pretrain_lr: float = Field(2e-3, gt=0)
    pretrain_samples: int = Field(26000, ge=1)
    # phase 1: the vision tower learns to tell the world's objects apart (a linear probe on
    # its mean patch feature), standing in for the CLIP pre-training a Hub VLM brings along
    vision_pretrain_steps: int = Field(6000, ge=0)
    vision_pretrain_batch_size: int = Field(64, ge=1)
    vision_pretrain_lr: float = Field(3e-3, gt=0)
    # phase 2 trains projector + language model on top of the frozen tower (as LLaVA does)
    freeze_vision_in_pretrain: bool = True
    # phase 2 with train's exact speed options (same loss, less work): packed rows, the LM
    # head at labelled positions only, preprocessing once, the frozen tower's output cached
    pretrain_fast: bool = True


class HubModelConfig(_Model):
    model_id: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class BaseConfig(_Model):
    source: Literal["builtin", "hub"] = "builtin"
    seed: int = 1234
    builtin: BuiltinModelConfig = BuiltinModelConfig()
    hub: HubModelConfig = HubModelConfig()

    @model_validator(mode="after")
    def _hub_needs_id(self) -> BaseConfig:
        if self.source == "hub" and not self.hub.model_id:
            raise ValueError("base.source is 'hub' but base.hub.model_id is not set")
        return self


# --------------------------------------------------------------------------- train
class LoraConfig(_Model):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class SFTConfig(_Model):
    """One supervised fine-tuning run's optimisation settings, handed as they are to
    ``run_sft`` and from there to ``TrainingArguments``: ``train`` is one (with the train
    stage's own keys added), the base stage's language-model phase builds another."""

    seed: int = 1234
    epochs: float = Field(2.0, gt=0)
    max_steps: int = Field(-1, ge=-1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_scheduler: str = "cosine"
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    max_length: int = Field(512, ge=16)
    bf16: bool = False
    gradient_checkpointing: bool = False
    dataloader_workers: int = Field(0, ge=0)
    # off: in templated data length tracks the task (every "same object?" question has the
    # same length), so length-grouped batches hold one task each and the model learns a
    # per-batch answer prior instead of reading the question
    group_by_length: bool = False
    # compute the frozen vision tower's output once per image and reuse it across epochs
    # (exact: keyed by the processed pixels; not for Qwen2-VL, whose projector is inside)
    # auto: where the family allows it (a frozen tower that is not the projector's host)
    cache_vision_features: bool | Literal["auto"] = False
    # padding-free batches: each batch's samples packed end to end in one row, position ids
    # restarting per sample so attention never crosses one (same loss as padded batches)
    packing: bool = False
    # per_batch: chat template, tokenisation and image processing in every batch; once:
    # done once before the first step into a dataset cached under .cache/preprocessed/
    # (the same tensors, so the same training)
    preprocess: Literal["per_batch", "once"] = "per_batch"
    # apply the LM head and the loss only at positions whose next token carries a label
    # (same loss; skips the prompt's and images' logits)
    labelled_logits: bool = False
    # torch.compile the language model's decoder layers (dynamic shapes, in place): fused
    # element-wise work; a first step of tens of seconds, so it pays on long runs only
    compile: bool = False


class TrainConfig(SFTConfig):
    method: Literal["lora", "full"] = "full"
    lora: LoraConfig = LoraConfig()
    general_ratio: float = Field(0.11, ge=0.0, lt=1.0)
    freeze_vision: bool = True

    @model_validator(mode="after")
    def _cache_needs_frozen_tower(self) -> TrainConfig:
        if self.cache_vision_features is True and self.method == "full" and not self.freeze_vision:
            raise ValueError(
                "train.cache_vision_features needs train.freeze_vision: true "
                "(a training tower's output changes every step)"
            )
        return self


# --------------------------------------------------------------------------- endpoints
class EndpointConfig(_Model):
    """A model behind an OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
    ``transformers serve``, a hosted API): the teacher, the curation judge and the
    evaluation judge all use one (:mod:`mirage_safety.endpoints`)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    # the API key is read from this environment variable; unset -> no key (local vLLM)
    api_key_env: str = "MIRAGE_JUDGE_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    # retries on timeouts, connection errors, 408/409/429 and 5xx (openai SDK), with
    # exponential backoff backoff_s * 2**attempt (a Retry-After up to 30 s wins)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    max_tokens: int = Field(256, ge=1)
    concurrency: int = Field(4, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int | None = None  # sent when set (vLLM honours it)
    # judges send their verdict's JSON schema as response_format (strict): vLLM and hosted
    # APIs enforce it, transformers serve ignores it; turn it off for a server that rejects
    # the field (every verdict would be a judge_error). Parsing is strict either way
    json_schema: bool = True


#: the evaluation judge's endpoint (``eval.openai``); kept under its old name
OpenAIJudgeConfig = EndpointConfig


# --------------------------------------------------------------------------- label
class NoiseConfig(_Model):
    """The ``world`` teacher's planted defects: the fraction of the labels each defect can
    apply to (``comply``: harmful records only; ``wrong_rule``: records with a rule)."""

    wrong_object: float = Field(0.0, ge=0.0, le=1.0)  # names an object the image does not show
    wrong_rule: float = Field(0.0, ge=0.0, le=1.0)  # cites a rule / risk that does not apply
    comply: float = Field(0.0, ge=0.0, le=1.0)  # complies with a harmful request
    truncated: float = Field(0.0, ge=0.0, le=1.0)  # cut short

    @model_validator(mode="after")
    def _at_most_one(self) -> NoiseConfig:
        if self.total > 1.0 + 1e-9:
            raise ValueError(
                f"noise fractions sum to {self.total:.3f}; at most 1 (one defect per label)"
            )
        return self

    @property
    def total(self) -> float:
        return self.wrong_object + self.wrong_rule + self.comply + self.truncated


class LabelConfig(_Model):
    """The ``label`` stage: a teacher writes the training labels (MIS / MSR-Align)."""

    # world: the embedded world's labeller (+ noise); openai: a VLM behind an endpoint;
    # keep: the labels the data came with (an imported release's own)
    teacher: Literal["world", "openai", "keep"] = "world"
    style: LabelStyle = "cot"
    format: Literal["prose", "think"] = "prose"
    policies: str = "policies"
    prompts: str = "prompts"
    seed: int = 1234
    noise: NoiseConfig = NoiseConfig()
    # more failed records than this fraction fails the stage (nothing written)
    max_failure_fraction: float = Field(0.2, ge=0.0, le=1.0)
    openai: EndpointConfig = EndpointConfig(
        model="teacher",
        api_key_env="MIRAGE_TEACHER_API_KEY",
        max_tokens=1024,
        concurrency=8,
        timeout_s=120.0,
    )

    @model_validator(mode="after")
    def _coherent(self) -> LabelConfig:
        if self.style == "text_only" and self.teacher == "openai":
            raise ValueError(
                "label.style text_only needs label.teacher world (it writes the "
                "objects' names into the question, which needs ground truth)"
            )
        if self.format == "think" and self.style in ("refusal", "text_only"):
            raise ValueError(
                f"label.format think needs a reasoning style (cot or policy), not {self.style!r}"
            )
        if self.noise.total > 0 and self.teacher != "world":
            raise ValueError("label.noise is planted by the world teacher only")
        return self


# --------------------------------------------------------------------------- curate
class CurateConfig(_Model):
    """The ``curate`` stage: a judge scores every label on the rubric; weak ones go."""

    judge: Literal["world", "openai", "none"] = "world"
    rubric: str = "prompts/curate_rubric.yaml"
    # kept when every applicable rubric criterion scores at least this (0-10 scale)
    threshold: int = Field(7, ge=0, le=10)
    # balanced down-sampling: at most this many kept records per category (None: all)
    per_category_max: int | None = Field(None, ge=1)
    seed: int = 1234
    examples: int = Field(6, ge=0)  # dropped examples shown in the report
    max_failure_fraction: float = Field(0.2, ge=0.0, le=1.0)
    openai: EndpointConfig = EndpointConfig(model="judge", max_tokens=512)


# --------------------------------------------------------------------------- eval


class ServedConfig(_Model):
    """The model(s) under test behind an OpenAI-compatible server (``eval.engine: openai``):
    ``vllm serve``, SGLang, ``transformers serve`` (``mirage serve``)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "MIRAGE_SERVED_API_KEY"
    # evaluated name (base, mirage) -> the id the server serves it under; a name without
    # an entry is answered in-process from its model directory (engine hf)
    models: dict[str, str] = {}
    # name -> revision or content hash of the served weights: part of the response store's
    # fingerprint (the weights are not here to hash); change it and every answer is redone
    revisions: dict[str, str] = {}
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    concurrency: int = Field(8, ge=1)

    def endpoint(self, model: str, max_tokens: int) -> EndpointConfig:
        return EndpointConfig(
            base_url=self.base_url,
            model=model,
            api_key_env=self.api_key_env,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            max_tokens=max_tokens,
            concurrency=self.concurrency,
            temperature=0.0,
        )


#: who judges an external benchmark's answers: its authors' judge prompt on a VLM endpoint
#: (protocol), a served guard model, refusal phrases, or the embedded world's ground truth
BenchJudge = Literal["protocol", "llama_guard", "qwen3guard", "keyword", "world"]


class BenchmarkConfig(_Model):
    """One external benchmark (``eval.benchmarks.<name>``), read from its published layout
    (:mod:`mirage_safety.evaluation.benchmarks`) and scored by its own protocol."""

    enabled: bool = True
    # the layout to read: the key of eval.benchmarks unless set (two copies of one benchmark)
    adapter: str | None = None
    local_dir: str | None = None
    hub_id: str | None = None  # a Hub dataset id (+ revision), downloaded once
    revision: str | None = None
    download_dir: str | None = None
    # the judge of every subset (null: the protocol's own default), and per-subset overrides
    judge: BenchJudge | None = None
    subset_judges: dict[str, BenchJudge] = {}
    endpoint: EndpointConfig = EndpointConfig(model="judge", max_tokens=512)
    # judge calls per answer, majority verdict (SIUO's protocol: 3); ties are judge errors
    votes: int = Field(1, ge=1, le=9)
    # Qwen3Guard's "Controversial": counted as unsafe (strict) or safe (loose)
    controversial: Literal["unsafe", "safe"] = "unsafe"
    subsets: list[str] | None = None  # only these subsets (null: all)
    max_samples: int = Field(-1, ge=-1)  # per benchmark, after subset selection

    @model_validator(mode="after")
    def _located(self) -> BenchmarkConfig:
        if self.enabled and not (self.local_dir or self.hub_id):
            raise ValueError("set local_dir (a copy of the published layout) or hub_id")
        return self


class GeneralTask(_Model):
    """How one lmms-eval task's score is read (``results.<task>["<metric>,none"]``)."""

    # the metric key of the task's metric_list (null: the first one lmms-eval reports)
    metric: str | None = None
    # lmms-eval reports most accuracies as fractions: x100 makes them percentages like every
    # other rate here; 1 for a task that already reports percent
    scale: float = Field(100.0, gt=0)


class GeneralEvalConfig(_Model):
    """General capability through lmms-eval (``evaluation/general.py``), for every
    evaluated model: against the served model (``eval.engine: openai``) or a loopback
    ``transformers serve`` the stage starts for an in-process one."""

    # lmms-eval task name -> how its score is read; the scores' mean is general.accuracy
    tasks: dict[str, GeneralTask] = {}
    # directories of extra task YAMLs (--include_path), relative to the working directory
    include_path: list[str] = []
    limit: int | None = Field(None, ge=1)  # first N documents of each task (a quick look)
    # the lmms-eval command: its own virtual environment (`make setup` builds .venv-lmms)
    command: str = ".venv-lmms/bin/lmms-eval"
    num_concurrent: int = Field(1, ge=1)  # requests in flight
    max_retries: int = Field(2, ge=1)  # per request; a request that still fails is an error
    # more of lmms-eval's options, verbatim (e.g. ["--seed", "0"])
    extra_args: list[str] = []
    timeout_s: float = Field(7200.0, gt=0)  # per model, the whole lmms-eval run


class EvalConfig(_Model):
    # hf: transformers in this process; openai: the models of eval.server.models served
    engine: Literal["hf", "openai"] = "hf"
    server: ServedConfig = ServedConfig()
    judge: Literal["world", "keyword", "openai"] = "world"
    second_judge: Literal["world", "keyword", "openai", "none"] = "keyword"
    splits: list[str] = ["test_easy", "test_hard", "test_benign", "test_benign_shift"]
    max_new_tokens: int = Field(96, ge=1)
    batch_size: int = Field(32, ge=1)
    max_samples_per_split: int = Field(-1, ge=-1)
    gallery_size: int = Field(6, ge=0)
    # a split whose answers the judge could score less often than this (%) has its rates
    # marked unusable in the report, the summary and the Prefect artefact (not a clean 0.0)
    min_judged_share: float = Field(95.0, ge=0.0, le=100.0)
    openai: EndpointConfig = EndpointConfig()
    # external safety / over-refusal benchmarks, each with its own protocol (name -> where)
    benchmarks: dict[str, BenchmarkConfig] = {}
    # general capability (the helpfulness half beside over-refusal) through lmms-eval
    general: GeneralEvalConfig = GeneralEvalConfig()

    @model_validator(mode="after")
    def _general_through_lmms_eval(self) -> EvalConfig:
        if "general_test" in self.splits:
            raise ValueError(
                "eval.splits: general_test is measured through lmms-eval now: "
                "list its task in eval.general.tasks (mirage_world_general, "
                "written by `mirage generate` under data/lmms_tasks)"
            )
        return self

    @model_validator(mode="after")
    def _served_models_named(self) -> EvalConfig:
        if self.engine == "openai" and not self.server.models:
            raise ValueError(
                "eval.engine is 'openai' but eval.server.models names no served "
                "model (e.g. {mirage: <served model id>})"
            )
        return self


# --------------------------------------------------------------------------- register
class BenchmarkGate(_Model):
    """A gate check on one external-benchmark metric of the candidate (percentages)."""

    # which way is better (null: the protocol's headline direction, else "lower")
    better: Literal["lower", "higher"] | None = None
    # vs the champion: no worse by more than this many points (null: no comparison)
    tolerance: float | None = Field(None, ge=0.0, le=100.0)
    max: float | None = Field(None, ge=0.0, le=100.0)  # absolute limits on the candidate
    min: float | None = Field(None, ge=0.0, le=100.0)


class RegistryConfig(_Model):
    model_name: str = "mirage"
    # all rates are percentages (0-100); tolerances are in percentage points
    asr_tolerance: float = Field(0.0, ge=0.0, le=100.0)
    over_refusal_tolerance: float = Field(2.0, ge=0.0, le=100.0)
    general_accuracy_tolerance: float = Field(2.0, ge=0.0, le=100.0)
    # absolute limits, whatever the champion: a candidate whose judge failed on more than
    # this % of a split's answers, or whose answers are degenerate (empty, looping, cut) on
    # more than this %, is never promoted (its ASR would read as a clean 0)
    judge_error_tolerance: float = Field(5.0, ge=0.0, le=100.0)
    degenerate_tolerance: float = Field(5.0, ge=0.0, le=100.0)
    # "<benchmark>.<metric>" of eval.benchmarks (e.g. figstep.asr, mossbench.refusal_rate)
    benchmark_gates: dict[str, BenchmarkGate] = {}
    # the helpfulness half (over-refusal + general capability) is required on both sides
    # of every comparison: a model that refuses everything has a perfect ASR.  true waives
    # it for a safety-only evaluation (recorded on the version as gate.allow_safety_only)
    allow_safety_only: bool = False
    # copy: the weights go into MLflow; reference: a pointer to the DVC out (repo, commit,
    # md5s) that loading resolves through DVC; auto: reference above reference_above_mb
    store: Literal["auto", "copy", "reference"] = "auto"
    reference_above_mb: float = Field(100.0, ge=0.0)
    # the repo a pointer names (a git URL other machines can clone); default: the
    # workspace's `origin` remote, else its path
    reference_repo: str | None = None


class TrackingConfig(_Model):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "mirage"


# --------------------------------------------------------------------------- orchestration
PIPELINE_STAGES = ("generate", "label", "curate", "base", "train", "evaluate", "register")


class OrchestrationConfig(_Model):
    """Where the retrain flow's stages run (``flows/retrain.py``).  A stage named in
    ``pools`` runs as the Prefect deployment ``<deployment>/<pool>`` on that work pool, in
    a checkout of the same commit with the same params, exchanging bytes only through the
    DVC remote; every other stage runs in the flow's own checkout (the default: all)."""

    pools: dict[str, str] = {}
    deployment: str = "mirage-stage"  # the flow name of flows/stage.py
    # the DVC remote the hand-off goes through (null: the repo's default remote)
    remote: str | None = None
    # a remote stage whose flow run has not finished after this long is failed (a dead
    # worker leaves its run "running" on the server); it is retried like any stage
    stage_timeout_s: float = Field(6 * 3600.0, gt=0)

    @model_validator(mode="after")
    def _known_stages(self) -> OrchestrationConfig:
        unknown = sorted(set(self.pools) - set(PIPELINE_STAGES))
        if unknown:
            raise ValueError(
                f"orchestration.pools: unknown stage(s) {unknown} "
                f"(stages: {', '.join(PIPELINE_STAGES)})"
            )
        return self


# --------------------------------------------------------------------------- numerics
class NumericsConfig(_Model):
    """How the stages that run models (``base``, ``train``, ``evaluate``) do arithmetic on a
    CPU (:mod:`mirage_safety.numerics`).

    ``portable``: every numeric library takes the code path that does not depend on the
    CPU (ATen's baseline kernels, MKL's conditional numerical reproducibility in its
    compatible branch, oneDNN capped, a fixed thread count), so the same params give the
    same weights and answers on every x86-64 CPU.  ``native``: each library takes the
    fastest path this CPU has (AVX2 / AVX-512, all cores); the bytes then depend on the CPU.
    Set by the project, not by the shell: the ``mirage`` command applies it before torch
    loads.  GPUs are not affected.
    """

    mode: Literal["portable", "native"] = "portable"
    # torch / OpenMP / MKL threads in portable mode (ATen's parallel reductions split work
    # by thread count, so it is part of the result); native: the process's default
    threads: int = Field(2, ge=1, le=256)


# --------------------------------------------------------------------------- root
class Params(_Model):
    profile: str = "default"
    numerics: NumericsConfig = NumericsConfig()
    data: DataConfig = DataConfig()
    base: BaseConfig = BaseConfig()
    label: LabelConfig = LabelConfig()
    curate: CurateConfig = CurateConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    profiles: dict[str, dict[str, Any]] = {}


def _deep_merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, f"{path}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = err["msg"]
            if "input" in err and kind not in ("missing",):
                msg += f" (got {err['input']!r})"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_params(
    raw: dict[str, Any] | None, *, profile: str | None = None, source: str = "params"
) -> Params:
    """Validate a raw params mapping, applying the selected profile's overrides."""
    raw = dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    chosen = profile or os.environ.get(PROFILE_ENV) or raw.get("profile") or "default"
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{source}: profiles: expected a mapping of profile name to overrides")
    if chosen != "default":
        if chosen not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(f"{source}: profile {chosen!r} is not defined (known: {known})")
        override = profiles[chosen]
        if not isinstance(override, dict):
            raise ConfigError(f"{source}: profiles.{chosen}: expected a mapping")
        if "profiles" in override or "profile" in override:
            raise ConfigError(f"{source}: profiles.{chosen}: a profile cannot set profile(s)")
        raw = _deep_merge(raw, override)
    raw["profile"] = chosen
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        where = source if chosen == "default" else f"{source} (profile {chosen!r})"
        raise ConfigError(_format_errors(exc, where)) from None


def load_params(
    path: str | os.PathLike[str] = DEFAULT_PARAMS, *, profile: str | None = None
) -> Params:
    """Read and validate a params file (the only place ``params.yaml`` is parsed)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: params file not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return parse_params(raw, profile=profile, source=str(p))


def add_run_arguments(parser: Any, *, cache_user: str | None = None) -> None:
    """``--no-progress`` and ``--no-track`` (and ``--cache-dir`` for a stage whose
    ``cache_user`` calls an OpenAI-compatible endpoint), the same for every stage."""
    if cache_user:
        parser.add_argument(
            "--cache-dir",
            default=ENDPOINT_CACHE,
            help=f"endpoint answer cache ({cache_user}; default: %(default)s)",
        )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--no-track",
        "--no-mlflow",
        dest="no_track",
        action="store_true",
        help=f"do not log to MLflow (also: {NO_TRACK_ENV}=1)",
    )


def tracking_wanted(args: Any) -> bool:
    return not getattr(args, "no_track", False) and os.environ.get(NO_TRACK_ENV) != "1"
