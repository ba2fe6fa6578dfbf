"""The training sections of a pipeline spec: ``data``, ``model``, ``train``, ``tracking``.

These models are the single source of truth: the YAML contract, the JSON Schema
(`orch schema`) and every check come from them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from jobs import models as zoo
from jobs import plugins

SKLEARN_SETS = ("digits", "wine", "breast_cancer", "iris", "diabetes")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


FilterOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in"]


class DataSpec(_Section):
    source: str | list[str] = Field(
        description="sklearn://<set> (digits, wine, breast_cancer, iris, diabetes), or Parquet "
        "or CSV data: a file, a folder (read recursively), a glob (*, ?, [..]) or a list of "
        "them, as local paths, file://, s3://, gs:// or abfs:// URIs. Credentials and "
        "endpoints come from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, "
        "GOOGLE_APPLICATION_CREDENTIALS, ...), never from the spec."
    )
    label: str = Field("target", description="Label column (files; sklearn sets use 'target').")
    features: list[str] | None = Field(
        None,
        description="Feature columns. null = every column of the files but the label (hive "
        "partition folders are columns too, for data.filter, and features when listed).",
    )
    task: Literal["classification", "regression"] | None = Field(
        None,
        description="classification | regression. null = inferred: sklearn sets know theirs; "
        "for files a floating-point label means regression, anything else classification.",
    )
    validation_split: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Share of rows held out for validation: a row is held out when a hash "
        "of its feature values and data.seed falls below it (the same rows in memory and "
        "streamed; identical rows share a split).",
    )
    seed: int = Field(0, description="Seed of the train/validation split and of the shuffles.")
    filter: list[tuple[str, FilterOp, Any]] | None = Field(
        None,
        description="Rows to keep, as [column, op, value] terms that must all hold, e.g. "
        "[[region, ==, eu], [year, '>=', 2024]]; columns may be hive partition folders "
        "(key=value). Pushed into the Parquet scan.",
    )
    streaming: Literal["auto"] | bool = Field(
        "auto",
        description="true: stream the source, each data-parallel rank reading only its own "
        "share (files: the rank reads its row groups itself; image folders and bundled sets: "
        "through Ray Data). false: the driver reads it into memory. auto: stream sources on "
        "object storage and sources larger than stream_above_mb.",
    )
    stream_above_mb: float = Field(
        256, ge=0, description="streaming auto: stream local sources larger than this (MiB)."
    )
    cpus_per_worker: float = Field(
        0.25,
        gt=0,
        le=4,
        description="Streaming through Ray Data (image folders, bundled sets): CPU of each "
        "training worker's share given to Ray Data's reading and decoding tasks; the worker "
        "keeps the rest. Streamed files are read in the worker's own CPU.",
    )
    input_shape: list[int] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="Shape of one row of a tensor feature column (a list, fixed-size list or "
        "fixed_shape_tensor column, named alone in data.features), e.g. [3, 32, 32]. null = "
        "the column's own shape (a fixed_shape_tensor's, or [length] of a list).",
    )
    image_size: list[int] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="[height, width]: data.source is a local folder of images, one subfolder "
        "per class (the label); every image is decoded and resized to this size. Read in "
        "memory.",
    )
    image_mode: Literal["RGB", "L"] = Field(
        "RGB", description="Images: RGB (3 channels) or L (grayscale, 1); each image is converted."
    )

    @field_validator("source")
    @classmethod
    def _known_sklearn_set(cls, source: str | list[str]) -> str | list[str]:
        locations = [source] if isinstance(source, str) else source
        if not locations:
            raise ValueError("the list is empty; name at least one file or folder")
        for location in locations:
            if not location.startswith("sklearn://"):
                continue
            if len(locations) > 1:
                raise ValueError("a sklearn:// set is a source on its own, not part of a list")
            name = location.removeprefix("sklearn://")
            if name not in SKLEARN_SETS:
                raise ValueError(
                    f"unknown scikit-learn set {name!r}; use one of "
                    + ", ".join(f"sklearn://{s}" for s in SKLEARN_SETS)
                )
        return source

    @field_validator("input_shape", "image_size")
    @classmethod
    def _positive_dims(cls, dims: list[int] | None) -> list[int] | None:
        if dims is not None and any(d < 1 for d in dims):
            raise ValueError(f"{dims}: every dimension is at least 1")
        return dims

    @model_validator(mode="after")
    def _images_from_one_local_folder(self) -> DataSpec:
        if self.image_size is None:
            return self
        if not isinstance(self.source, str) or "://" in self.source:
            raise ValueError(
                "data.image_size reads one local folder of class subfolders; name it as "
                "data.source (for images on object storage, write them as a Parquet tensor "
                "column)"
            )
        if self.features not in (None, ["image"]):
            raise ValueError("an image folder's one feature is 'image'; leave data.features out")
        return self

    @property
    def sklearn_set(self) -> str | None:
        """The bundled set's name for a sklearn:// source, else None."""
        if isinstance(self.source, str) and self.source.startswith("sklearn://"):
            return self.source.removeprefix("sklearn://")
        return None


# package.module:function, the import-path form of model.type (jobs.plugins)
_IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


def _zoo_union(schema: dict) -> None:
    """``model`` in the JSON Schema as a union over the zoo keyed by ``type``: an editor
    completes and checks each model's own ``params`` (their fields, types, defaults and
    docs). Built when the schema is asked for, so a model added with
    ``jobs.models.register_model`` or by an installed plugin brings its branch; an import
    path gets a branch of free params. The YAML keeps ``{type, params}``."""
    entries = zoo.known_entries()
    names = sorted(entries)
    type_schema = schema["properties"]["type"]
    type_schema["anyOf"] = [{"enum": names}, {"pattern": _IMPORT_PATH}]
    schema["oneOf"] = [
        {
            "properties": {
                "type": {"const": name},
                "params": {
                    **_inlined(entries[name].params_model.model_json_schema()),
                    "description": f"Params of the {name} model.",
                },
            },
            "required": ["type"],
        }
        for name in names
    ] + [
        {
            "properties": {
                "type": {"pattern": _IMPORT_PATH},
                "params": {"type": "object", "description": "Params of that factory."},
            },
            "required": ["type"],
        }
    ]


def _inlined(schema: dict) -> dict:
    """A params model's schema with its own ``$defs`` (nested models) put in place of
    their ``$ref``s: it is embedded in the spec's schema, where those refs would dangle."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


class ModelSpec(_Section):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_zoo_union)

    type: str = Field(
        description="Model zoo entry ("
        + " | ".join(sorted(zoo.MODEL_ZOO))
        + "), an installed plugin's name (entry point orch.models), or an import path "
        "package.module:function"
    )
    params: dict = Field(
        default_factory=dict, description="Params of that model type (see the oneOf branches)."
    )

    @field_validator("type")
    @classmethod
    def _known(cls, model_type: str) -> str:
        # An import path is checked for its form only: parsing a spec never imports code it
        # names (the queue parses a member's spec before refusing its import path); it is
        # imported, and its params checked, with the data (orchestrator.loader) or when built.
        if plugins.is_import_path(model_type):
            plugins.check_import_path(model_type)
        else:
            zoo.get_entry(model_type)
        return model_type

    @model_validator(mode="after")
    def _params_fit_type(self) -> ModelSpec:
        if plugins.is_import_path(self.type):
            return self
        try:
            zoo.get_entry(self.type).params_model.model_validate(self.params)
        except ValidationError as exc:
            raise _params_error(exc) from None
        return self


def _params_error(exc: ValidationError) -> PydanticCustomError:
    """A params model's errors as one error of ``model.params``; the loader expands
    ctx["errors"] into one error per params field."""
    inner = exc.errors(include_url=False, include_context=False, include_input=False)
    detail = "; ".join(f"params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in inner)
    return PydanticCustomError("model_params", "{detail}", {"detail": detail, "errors": inner})


def params_problem(exc: ValidationError) -> str:
    """A params model's errors in one line: ``params.width: ...; params.x: ...``."""
    return _params_error(exc).message()


class OptimizerSpec(_Section):
    type: Literal["adam", "adamw", "sgd"] = Field("adamw", description="adam | adamw | sgd")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay (decoupled for adamw).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas (adam, adamw).")


class SchedulerSpec(_Section):
    type: Literal["none", "cosine", "step", "linear"] = Field(
        "none", description="none | cosine | step | linear (decay after warm-up)."
    )
    warmup_epochs: float = Field(0, ge=0, description="Linear warm-up from 0 to lr, in epochs.")
    step_size_epochs: int = Field(10, ge=1, description="step: epochs between decays.")
    gamma: float = Field(0.1, gt=0, le=1, description="step: factor applied at each decay.")


class DeepSpeedSpec(_Section):
    zero_stage: int = Field(0, ge=0, le=3, description="ZeRO stage 0..3 (0 = plain data parallel).")
    pipeline_stages: int = Field(
        1, ge=1, description="1 = no pipeline. >1 = DeepSpeed PipelineModule with this many stages."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32 | bf16 | fp16 (fp16 needs GPUs)."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per step.")
    gradient_clipping: float = Field(0.0, ge=0, description="Max gradient norm; 0 = off.")

    @model_validator(mode="after")
    def _pipeline_needs_low_zero(self) -> DeepSpeedSpec:
        if self.pipeline_stages > 1 and self.zero_stage > 1:
            raise ValueError(
                f"pipeline_stages={self.pipeline_stages} needs zero_stage 0 or 1, got "
                f"zero_stage={self.zero_stage} (DeepSpeed refuses ZeRO-2/3 with pipelines)"
            )
        return self


class CheckpointSpec(_Section):
    every_epochs: int = Field(1, ge=1, description="Save a checkpoint every this many epochs.")
    keep: int = Field(2, ge=1, description="How many recent checkpoints to keep.")


class ProfileSpec(_Section):
    """``train.profile``: ``torch.profiler`` over a few optimizer steps (off when absent)."""

    steps: int = Field(5, ge=1, description="Optimizer steps to record.")
    skip: int = Field(
        2,
        ge=0,
        description="Optimizer steps to run first, unrecorded (start-up and warm-up: the "
        "first steps allocate and are not typical). The last skipped step warms the profiler.",
    )
    ranks: Literal["first", "all"] = Field(
        "first", description="Whose steps: first = rank 0 only; all = every worker's."
    )
    record_shapes: bool = Field(
        False,
        description="Record operators' input shapes (a larger trace; the table groups by them).",
    )

    @property
    def last_step(self) -> int:
        """The last optimizer step recorded (1-based): the run must have this many."""
        return self.skip + self.steps


class TrainSpec(_Section):
    epochs: int = Field(10, ge=1, description="Passes over the training split.")
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Optimizer steps per epoch (validation, checkpoint and report after each). "
        "null = one pass over the training split. Set it when one pass is too long to wait "
        "for: epochs then walk on through the data; a resumed run starts a new pass.",
    )
    batch_size: int = Field(64, ge=1, description="Global samples per optimizer step.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec, description="LR schedule.")
    workers: int = Field(
        1, ge=1, description="Ray Train workers = data-parallel degree x pipeline_stages."
    )
    runner: Literal["auto", "ray-train", "local"] = Field(
        "auto",
        description="Who runs the training loop. ray-train: Ray Train workers (TorchTrainer). "
        "local: the loop runs in one Ray task, or in the Tune trial's own actor (one worker "
        "only; no Ray Train start-up). auto = local when workers is 1, else ray-train.",
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description="Ray resources of each worker, e.g. {CPU: 0.5} or {CPU: 4, GPU: 1}.",
    )
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    max_failures: int = Field(
        2, ge=-1, description="Worker failures to recover from by resuming; -1 = unlimited."
    )
    profile: ProfileSpec | None = Field(
        None,
        description="Profile optimizer steps with torch.profiler: the Chrome trace, the top "
        "operators and the step's phases (data wait, forward, backward, optimizer step, "
        "communication) go to the run's MLflow artifacts under profile/. null = off.",
    )
    storage_path: str | None = Field(
        None,
        description="Where Ray Train keeps checkpoints (a shared path or URI on multi-node "
        "clusters). null = ./.orch/runs.",
    )

    @field_validator("resources_per_worker")
    @classmethod
    def _positive_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in resources.items() if v <= 0}
        if bad:
            raise ValueError(f"resource amounts must be > 0, got {bad}")
        return resources

    def check_profile_fits(self, steps_per_epoch: int) -> None:
        """A profile must end within the run: ``skip + steps`` <= epochs x steps an epoch."""
        total = self.epochs * steps_per_epoch
        if self.profile is not None and self.profile.last_step > total:
            raise ValueError(
                f"train.profile.steps: skip {self.profile.skip} + steps {self.profile.steps} = "
                f"{self.profile.last_step} optimizer steps, but the run has {total} "
                f"({self.epochs} epochs x {steps_per_epoch} steps); profile at most "
                f"{max(total - self.profile.skip, 1)} steps, or lower train.profile.skip"
            )

    @property
    def uses_gpu(self) -> bool:
        return self.resources_per_worker.get("GPU", 0) > 0

    @property
    def resolved_runner(self) -> Literal["ray-train", "local"]:
        """The runner ``auto`` stands for: local for a single worker."""
        if self.runner == "auto":
            return "local" if self.workers == 1 else "ray-train"
        return self.runner

    @property
    def data_parallel_degree(self) -> int:
        return self.workers // self.deepspeed.pipeline_stages

    @property
    def micro_batch_size(self) -> int:
        """Samples per worker per forward pass."""
        return self.batch_size // (
            self.data_parallel_degree * self.deepspeed.gradient_accumulation_steps
        )

    @model_validator(mode="after")
    def _layout_fits(self) -> TrainSpec:
        ds = self.deepspeed
        if self.workers % ds.pipeline_stages:
            raise ValueError(
                f"workers ({self.workers}) must be a multiple of deepspeed.pipeline_stages "
                f"({ds.pipeline_stages}); e.g. workers: {ds.pipeline_stages * 2} for 2-way data "
                "parallel"
            )
        split = self.data_parallel_degree * ds.gradient_accumulation_steps
        if self.batch_size % split:
            raise ValueError(
                f"batch_size ({self.batch_size}) must divide evenly into data-parallel degree "
                f"({self.data_parallel_degree}) x gradient_accumulation_steps "
                f"({ds.gradient_accumulation_steps}) = {split}; e.g. batch_size: "
                f"{max(split, self.batch_size // split * split)}"
            )
        if self.runner == "local" and (self.workers > 1 or ds.pipeline_stages > 1):
            raise ValueError(
                f"runner local runs one worker in one process, but workers={self.workers} and "
                f"deepspeed.pipeline_stages={ds.pipeline_stages}; use runner: ray-train (or "
                "auto) for several workers, or workers: 1"
            )
        if self.profile is not None and ds.pipeline_stages > 1:
            raise ValueError(
                "train.profile splits a step into forward, backward and optimizer phases, but "
                f"a {ds.pipeline_stages}-stage pipeline runs them interleaved inside DeepSpeed's "
                "train_batch; profile the model with deepspeed.pipeline_stages: 1"
            )
        if self.profile is not None and self.steps_per_epoch is not None:
            self.check_profile_fits(self.steps_per_epoch)
        if ds.precision == "fp16" and not self.uses_gpu:
            raise ValueError(
                "precision fp16 needs GPUs (DeepSpeed: 'Type fp16 is not supported' on CPU); "
                "use precision: bf16 or fp32, or give workers a GPU in resources_per_worker"
            )
        return self


class TrackingSpec(_Section):
    experiment: str | None = Field(None, description="MLflow experiment. null = pipeline name.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI. null = $MLFLOW_TRACKING_URI if set, else the "
        "embedded SQLite store under ./.orch/.",
    )


def check_pipeline_fits_model(model: ModelSpec, train: TrainSpec, imports: bool = False) -> None:
    """Cross-section rule: a pipeline cannot have more stages than the model has layers,
    and a model that is one module cannot be split at all.

    An import path's model is counted only with ``imports`` (the loader's data check):
    parsing a spec never imports code it names.
    """
    stages = train.deepspeed.pipeline_stages
    if stages > 1 and (imports or not plugins.is_import_path(model.type)):
        layers = zoo.count_layers(model.type, model.params)
        if stages > layers:
            raise ValueError(
                f"train.deepspeed.pipeline_stages={stages} but model {model.type!r} has only "
                f"{layers} layers; use at most {layers} stages or a deeper model"
            )
