"""The Python SDK. The CLI is a thin layer over it, so the two cannot disagree.

from orchestrator import Client
client = Client()                      # local Ray + ./.orch/ MLflow store
spec = client.validate("pipeline.yaml")
result = client.run("pipeline.yaml", on_event=print)
result.metrics["val_accuracy"], result.mlflow_run_id
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.loader import load_spec, load_spec_deferring_data
from orchestrator.spec import PipelineSpec
from serve.records import AliasMoved, ModelDetails, RegisteredModel

# The stages (Ray, torch, MLflow) are imported by the methods that run them, so validating
# a spec imports neither torch nor Ray.
if TYPE_CHECKING:
    from jobs.events import Event
    from orchestrator.plan import RunPlan
    from orchestrator.results import RunResult
    from orchestrator.serving import ServeResult

_RESULT_TYPES = ("RunResult", "StudyReport")


def __getattr__(name: str):
    """``RunResult`` and ``StudyReport`` (``orchestrator.results``), imported on first use."""
    if name in _RESULT_TYPES:
        from orchestrator import results

        return getattr(results, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Client:
    """Runs pipelines on a Ray cluster, and queues them on its job queue.

    Args:
        address: the cluster, in any form Ray users have: "auto", the GCS "host:port", or
            the dashboard URL "http://host:8265"; None = $RAY_ADDRESS when set (it is, in a
            ``ray job submit`` driver), else a private local Ray (``run``) or the embedded
            local head (the queue). A malformed address raises ``AddressError`` on first use.
        show_worker_logs: stream worker stdout/stderr to this process.
    """

    def __init__(self, address: str | None = None, *, show_worker_logs: bool = True):
        self._address_flag = address
        self._address = None
        self._address_read = False
        self.show_worker_logs = show_worker_logs

    @property
    def address(self):
        """The parsed ``RayAddress`` (None: the local default).

        Raises:
            AddressError: not one of the forms above (the message lists them).
        """
        if not self._address_read:
            from orchestrator.address import given_address, recorded_head

            self._address = given_address(self._address_flag)
            if self._address is not None and self._address.kind == "auto":
                recorded_head()  # its token settings go into the env before Ray reads them
            self._address_read = True
        return self._address

    def validate(self, spec: str | Path, check_data: bool = True) -> PipelineSpec:
        """Load and check a spec file; raises SpecError (file:line: field: fix)."""
        return load_spec(spec, check_data=check_data)

    def run(
        self,
        spec: str | Path | PipelineSpec,
        on_event: Callable[[Event], None] | None = None,
        *,
        resume: bool = False,
        run_name: str | None = None,
        plan: RunPlan | None = None,
    ) -> RunResult:
        """Run a pipeline to the end and return its result.

        With a ``tune`` section this runs a study and returns the best trial; ``resume``
        continues the pipeline's last unfinished study instead of starting a new one.
        ``run_name`` names the training run (or study): running again under the same name
        resumes from its checkpoints (or its unfinished study). ``plan``: an
        ``orchestrator.plan.RunPlan`` decided earlier (the queue's, at submit): a study
        runs the trials at once it fixes; None plans at start.

        Raises:
            SpecError: invalid spec or data, or nothing to resume; nothing was started.
            JobFailedError: a stage failed (the MLflow run is marked FAILED).
        """
        # the address first: "auto" may set Ray's token settings, which Ray reads on import
        address = self.address
        from orchestrator.results import RunResult
        from orchestrator.stages import run_training

        if isinstance(spec, PipelineSpec):
            pipeline, check_data = spec, None
        else:  # checked against its data while Ray connects (see run_training)
            pipeline, check_data = load_spec_deferring_data(spec)
        if pipeline.tune is not None:
            if check_data is not None:
                check_data()
            concurrent = plan.concurrent_trials if plan is not None else None
            study = self._run_study(pipeline, on_event, resume, run_name, concurrent)
            result = self._register(pipeline, study, on_event)
            return self._serve_stage(pipeline, result, on_event)
        if resume:
            from orchestrator.exceptions import SpecError

            raise SpecError(
                f"--resume continues a tuning study, and {pipeline.name!r} has no tune section; "
                "a training run already resumes from its checkpoints when workers fail"
            )
        run = run_training(
            pipeline,
            address=address,
            on_event=on_event,
            show_worker_logs=self.show_worker_logs,
            run_name=run_name,
            check_data=check_data,
        )
        outcome = RunResult.of_training(pipeline.name, run)
        return self._serve_stage(pipeline, self._register(pipeline, outcome, on_event), on_event)

    def _serve_stage(self, pipeline: PipelineSpec, result: RunResult, on_event) -> RunResult:
        if pipeline.serve is not None:
            result.served = self.serve(pipeline, on_event)
            result.endpoint = result.served.endpoint
        return result

    def serve(
        self,
        spec: str | Path | PipelineSpec,
        on_event: Callable[[Event], None] | None = None,
        *,
        emit_config: str | None = None,
    ) -> ServeResult:
        """Deploy the spec's serve section on Ray Serve and return where it answers.

        The model is ``serve.model`` (default: the pipeline's registered alias), quantized
        and gated on the validation split first. With ``emit_config`` nothing is deployed:
        a ``serve deploy`` config is written there instead. Serve keeps running after this
        returns (``serve.shutdown()`` or the end of the Ray session stops it).

        Raises:
            SpecError: no serve section, or nothing registered under the model URI.
            JobFailedError: quantization failed or lost more than max_accuracy_drop.
            ClusterError: the cluster cannot hold the replicas.
        """
        address = self.address  # before Ray is imported (see run)
        from orchestrator.serving import run_serving

        pipeline = spec if isinstance(spec, PipelineSpec) else load_spec(spec)
        return run_serving(
            pipeline,
            address=address,
            on_event=on_event,
            emit_config_path=emit_config,
            show_worker_logs=self.show_worker_logs,
        )

    def stop_serving(self, spec: str | Path | PipelineSpec) -> bool:
        """Take the spec's Serve application down; False when it was not running.

        Raises:
            SpecError: the spec has no serve section.
        """
        from orchestrator.serving import stop_serving

        pipeline = spec if isinstance(spec, PipelineSpec) else load_spec(spec)
        return stop_serving(pipeline, address=self.address)

    def _run_study(
        self,
        pipeline: PipelineSpec,
        on_event,
        resume: bool,
        run_name: str | None = None,
        concurrent_trials: int | None = None,
    ) -> RunResult:
        from orchestrator.results import RunResult
        from orchestrator.stages import run_study_pipeline

        run = run_study_pipeline(
            pipeline,
            address=self.address,
            on_event=on_event,
            show_worker_logs=self.show_worker_logs,
            resume=resume,
            run_name=run_name,
            concurrent_trials=concurrent_trials,
        )
        return RunResult.of_study(pipeline.name, pipeline.tune, run)

    def _register(self, pipeline: PipelineSpec, result: RunResult, on_event) -> RunResult:
        from orchestrator.stages import run_registration

        result.registered = run_registration(
            pipeline,
            run_id=result.mlflow_run_id,
            model_uri=result.model_uri,
            tracking_uri=result.tracking_uri,
            metrics=result.metrics,
            task=result.task,
            on_event=on_event,
        )
        return result

    # ------------------------------------------------------------- the job queue

    @property
    def queue_client(self):
        """The queue of this client's cluster (``address`` = its dashboard URL, or None for
        the embedded local head); ``orch submit/queue/list/...`` use the same object."""
        from orchestrator.queue_client import QueueClient

        if getattr(self, "_queue", None) is None:
            self._queue = QueueClient(self.address)
        return self._queue

    def submit(
        self,
        spec: str | Path,
        *,
        priority: str | int | None = None,
        name: str | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ):
        """Queue a pipeline; returns a ``Job`` (``wait``, ``status``, ``result``, ``logs``).

        The job is admitted when its whole resource demand fits the cluster, highest
        priority first. The same ``idempotency_key`` returns the job it created first.

        Raises:
            SpecError: invalid spec, or a demand the cluster can never hold (the reason).
        """
        return self.queue_client.submit(
            spec, priority=priority, name=name, queue=queue, idempotency_key=idempotency_key
        )

    def job(self, job_id: str):
        """A handle on a submitted job."""
        return self.queue_client.job(job_id)

    def jobs(self, state: str | None = None):
        """Every job the queue knows (optionally in one state), oldest first."""
        return self.queue_client.jobs(state)

    def queue(self):
        """Queued jobs in admission order as (position, JobInfo); ``reason`` says why each waits."""
        return self.queue_client.queue()

    def cancel(self, job_id: str):
        """Cancel a queued or running job (a running one's Ray job is stopped)."""
        return self.queue_client.cancel(job_id)

    def retry(self, job_id: str):
        """Submit a failed or cancelled job again with its original spec; returns the new Job."""
        return self.queue_client.retry(job_id)

    # ------------------------------------------------------------- the model registry

    def _registry(self, tracking_uri: str | None):
        from orchestrator.runtime import default_tracking_uri
        from serve.registry import Registry

        return Registry(tracking_uri or default_tracking_uri())

    def admin(self, state_dir: str | None = None):
        """The queue's users, teams and audit trail, for an admin on the head
        (``orch users | teams | audit``): an ``orchestrator.admin.QueueAdmin`` on the queue
        under ``state_dir`` (default ``$ORCH_HOME/queue``)."""
        from orchestrator.admin import QueueAdmin

        return QueueAdmin(state_dir)

    def list_models(self, tracking_uri: str | None = None) -> list[RegisteredModel]:
        """Registered models: name, number of versions, latest version, aliases."""
        return self._registry(tracking_uri).models()

    def show_model(self, name: str, tracking_uri: str | None = None) -> ModelDetails:
        """A registered model's aliases and versions (metrics and lineage tags)."""
        return _registry_call(lambda: self._registry(tracking_uri).show(name))

    def promote(
        self, name: str, version: str, alias: str = "champion", tracking_uri: str | None = None
    ) -> None:
        """Point ``name@alias`` at ``version`` (by hand, whatever promote_if says)."""
        _registry_call(lambda: self._registry(tracking_uri).promote(name, str(version), alias))

    def rollback(
        self, name: str, alias: str = "champion", tracking_uri: str | None = None
    ) -> AliasMoved:
        """Move ``name@alias`` back to the version that held it before."""
        return _registry_call(lambda: self._registry(tracking_uri).rollback(name, alias))

    # -------------------------------------------------------- orch's local cluster

    def cluster_up(
        self,
        nodes: int = 2,
        cpus_per_node: int = 1,
        labels: dict[str, str] | list[str] | None = None,
        *,
        ingress: str | None = None,
    ):
        """Start a head and ``nodes - 1`` worker raylets on this machine, each its own Ray
        node, recorded under $ORCH_HOME/cluster (``orch cluster up``); returns a
        ``ClusterStarted`` once all have joined. ``labels``: on every node (KEY=VALUE or a
        dict); ``ingress``: haproxy | proxy (default: $ORCH_SERVE_INGRESS, else haproxy).

        Raises:
            OrchestratorError: a bad count or label; UsageError: the ingress cannot run;
            ClusterError: a node did not start or join.
        """
        from orchestrator.local_cluster import start_cluster

        return start_cluster(nodes, cpus_per_node, labels or [], ingress)

    def cluster_status(self, address: str | None = None):
        """The recorded cluster's processes and Ray's nodes (``ClusterStatus``), or with
        ``address`` (any form) Ray's nodes of that cluster; None when none is recorded."""
        from orchestrator.local_cluster import cluster_status

        return cluster_status(address)

    def cluster_down(self):
        """Stop this ORCH_HOME's queue server and the nodes orch started, by their recorded
        PIDs (nothing else); returns a ``ClusterStopped``."""
        from orchestrator.local_cluster import stop_cluster

        return stop_cluster()

    def ui(self, host: str = "127.0.0.1", port: int = 5000, read_only: bool = False):
        """Start the MLflow UI on the embedded store; returns its ``subprocess.Popen``
        (stop it with ``terminate()``). ``orch ui`` runs the same command in its place;
        ``read_only`` opens the store read-only (``orchestrator.mlflow_ui``).

        Raises:
            OrchestratorError: the ``mlflow`` command is not installed here.
            UsageError: ``read_only`` on a store that is not a SQLite file.
        """
        import subprocess

        from orchestrator.mlflow_ui import ui_command

        return subprocess.Popen(ui_command(host, port, read_only))

    def load_model(self, model_uri: str, tracking_uri: str | None = None):
        """A logged or registered model (``runs:/``, ``models:/name@alias``, ``models:/m-...``)
        as a torch module, read from ``tracking_uri`` (default: $MLFLOW_TRACKING_URI, else
        the embedded store; ``RunResult.tracking_uri`` names a run's own).

        MLflow's own ``mlflow.pytorch.load_model`` reads the process-wide tracking URI,
        which orch leaves as you set it: this call needs none set.
        """
        from jobs.model_loading import load_model
        from orchestrator.runtime import default_tracking_uri

        return load_model(model_uri, tracking_uri or default_tracking_uri())


def _registry_call(call):
    from orchestrator.exceptions import OrchestratorError
    from serve.registry import RegistryError

    try:
        return call()
    except RegistryError as exc:
        raise OrchestratorError(str(exc)) from None
