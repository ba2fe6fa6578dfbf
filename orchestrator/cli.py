"""`orch`: a thin CLI over the SDK. User mistakes print one line and exit non-zero."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from orchestrator import cli_cluster, cli_queue, cli_server, cli_users
from orchestrator.address import ADDRESS_HELP
from orchestrator.exceptions import OrchestratorError, UsageError, first_line


def Client(*args, **kwargs):  # noqa: N802 - the SDK's Client, imported on first use
    from orchestrator.client import Client as SDKClient

    return SDKClient(*args, **kwargs)


def Console(*args, **kwargs):  # noqa: N802
    from rich.console import Console as RichConsole

    return RichConsole(*args, **kwargs)


def RunDisplay(*args, **kwargs):  # noqa: N802
    from orchestrator.progress import RunDisplay as Display

    return Display(*args, **kwargs)


def format_metrics(metrics):
    from orchestrator.progress import format_metrics as fmt

    return fmt(metrics)


def format_params(params):
    from orchestrator.progress import format_params as fmt

    return fmt(params)


_TRIAL_STATES = ("completed", "stopped", "failed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orch", description="Run YAML ML pipelines on Ray: train, track, (tune, serve)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = sub.add_parser("validate", help="check a pipeline spec; starts nothing")
    validate.add_argument("spec", help="pipeline YAML file")
    validate.add_argument("--no-data", action="store_true", help="skip opening the data source")
    _add_run(sub)
    _add_serve(sub)
    sub.add_parser("schema", help="print the spec's JSON Schema (for editors)")
    _add_models(sub)
    cli_queue.add_commands(sub)
    cli_server.add_command(sub)
    cli_users.add_command(sub)
    cli_cluster.add_command(sub)
    dashboard = sub.add_parser(
        "dashboard", help="where the Ray dashboard is, and the file holding the token it asks for"
    )
    dashboard.add_argument(
        "--address",
        default=None,
        help=ADDRESS_HELP.format(default="the cluster recorded under $ORCH_HOME/cluster"),
    )
    dashboard.add_argument("--json", action="store_true", help="print JSON")
    ui = sub.add_parser("ui", help="open the MLflow UI on the embedded store")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument(
        "--read-only",
        action="store_true",
        help="open the store read-only and serve no artifact uploads: the UI for a shared "
        "queue's members",
    )
    return parser


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="run a pipeline to the end")
    run.add_argument("spec", help="pipeline YAML file")
    run.add_argument(
        "--address", default=None, help=ADDRESS_HELP.format(default="a private local Ray")
    )
    out = run.add_mutually_exclusive_group()
    out.add_argument("--quiet", action="store_true", help="print only the final summary line")
    out.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    run.add_argument("--verbose", action="store_true", help="show Ray and DeepSpeed worker logs")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue this pipeline's last unfinished tuning study (finished trials are kept)",
    )
    run.add_argument(
        "--plan",
        metavar="PATH",
        default=None,
        help="run with this plan (the queue passes the one it admitted the job for): a study "
        "runs its trials at once",
    )
    run.add_argument(
        "--result-file",
        metavar="PATH",
        default=None,
        help="also write the outcome (what --json prints) to PATH, whole or not at all",
    )
    run.add_argument(
        "--run-name",
        default=None,
        help="stable name of the training run or study: running again under the same name "
        "resumes from its checkpoints (the queue uses this to resume preempted jobs)",
    )


def _add_serve(sub) -> None:
    serve = sub.add_parser(
        "serve", help="deploy the spec's serve section: the registered model on Ray Serve"
    )
    serve.add_argument("spec", help="pipeline YAML file with a serve section")
    serve.add_argument(
        "--address",
        default=None,
        help="deploy onto this cluster and return; "
        + ADDRESS_HELP.format(default="a local Ray, served in the foreground until Ctrl-C"),
    )
    serve.add_argument(
        "--emit-config",
        metavar="PATH",
        default=None,
        help="write a `serve deploy` config to PATH instead of deploying",
    )
    serve.add_argument(
        "--down",
        action="store_true",
        help="take the spec's application down instead (with --address: on that cluster)",
    )
    serve.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    serve.add_argument("--verbose", action="store_true", help="show Ray worker logs")


def _add_models(sub) -> None:
    models = sub.add_parser(
        "models", help="the MLflow model registry: list, show, promote, rollback"
    )
    models.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: the embedded store)"
    )
    models.add_argument(
        "--server",
        default=None,
        help="the queue server's URL: its registry, with your queue token (default "
        "$ORCH_SERVER; members change models only this way)",
    )
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    mlist = msub.add_parser("list", help="registered models with their versions and aliases")
    mlist.add_argument("--json", action="store_true", help="print JSON")
    mshow = msub.add_parser("show", help="a model's versions, metrics, lineage and aliases")
    mshow.add_argument("name")
    mshow.add_argument("--json", action="store_true", help="print JSON")
    mpromote = msub.add_parser("promote", help="point an alias at a version")
    mpromote.add_argument("name")
    mpromote.add_argument("version")
    mpromote.add_argument("--alias", default="champion", help="default: champion")
    mrollback = msub.add_parser("rollback", help="move an alias back to its previous version")
    mrollback.add_argument("name")
    mrollback.add_argument("--alias", default="champion", help="default: champion")


def _cmd_validate(args) -> int:
    spec = Client().validate(args.spec, check_data=not args.no_data)
    t = spec.train
    print(
        f"{args.spec}: ok: {spec.name}: {spec.model.type} on {spec.data.source}, "
        f"{t.workers} workers (pipeline {t.deepspeed.pipeline_stages} x data "
        f"{t.data_parallel_degree}) on the {t.resolved_runner} runner, "
        f"ZeRO-{t.deepspeed.zero_stage}, {t.deepspeed.precision}"
    )
    if spec.tune is not None:
        tune = spec.tune
        print(
            f"  tune: {tune.search.algorithm} search, {tune.planned_trials()} trials, "
            f"{tune.early_stopping.type} early stopping, {tune.resolved_mode} {tune.metric} "
            f"over {', '.join(tune.space)}"
        )
        if tune.refit is not None:
            from tuning.spec import refit_train

            refit = refit_train(t.model_dump(mode="json"), tune.refit)
            print(
                f"  refit: the best configuration on {refit.workers} workers "
                f"({refit.resolved_runner} runner, ZeRO-{refit.deepspeed.zero_stage})"
            )
    return 0


def _cmd_run(args) -> int:
    term = _capture("run", args)
    show_progress = not (args.quiet or args.json)
    display = RunDisplay(Console(file=term.err)) if show_progress else None
    foreground = _foreground(args)
    client = Client(args.address, show_worker_logs=args.verbose)
    _check_result_file(args.result_file)  # a bad path stops here, before any work
    try:
        result = client.run(
            args.spec,
            on_event=_arming(display, foreground),
            resume=args.resume,
            run_name=args.run_name,
            plan=_plan(args.plan),
        )
    except OrchestratorError as exc:
        failed = json.dumps({"spec": args.spec, "status": "failed", "error": str(exc)})
        _record_outcome(args.result_file, failed, after_failure=True)
        if args.json:
            print(failed, file=term.out, flush=True)
        raise
    except BaseException as exc:  # interrupted, or a bug: the file still says it failed
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else first_line(exc)
        failed = json.dumps({"spec": args.spec, "status": "failed", "error": why})
        _record_outcome(args.result_file, failed, after_failure=True)
        raise
    finally:
        if display:
            display.close()
    _record_outcome(args.result_file, result.model_dump_json())
    out = term.out
    _ingress_note(result.served, term.err)
    if args.json:
        print(result.model_dump_json(), file=out, flush=True)
        if result.served is not None:
            _serve_in_foreground(foreground, result.served.app)
        return 0
    if result.study is not None:
        study = result.study
        print(
            f"{result.name}: best trial {study.best_trial_id}: {study.metric}="
            f"{study.best_metric:.4g} with {format_params(study.best_params)}",
            file=out,
        )
        counts = {s: sum(t.status == s for t in study.trials) for s in _TRIAL_STATES}
        print(
            f"  {len(study.trials)} trials: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f"; {sum(t.epoch for t in study.trials)} epochs in {study.wall_s:.0f} s",
            file=out,
        )
    print(f"{result.name}: {result.status}: {format_metrics(result.metrics)}", file=out)
    for step in result.profile:  # train.profile; its trace and table are MLflow artifacts
        print(f"  {step.describe()}; trace and top operators: MLflow artifacts profile/", file=out)
    if result.registered is not None:
        reg = result.registered
        moved = (
            f"@{reg.alias} -> version {reg.version}" if reg.promoted else f"@{reg.alias} unchanged"
        )
        print(f"Registered {reg.model_name} version {reg.version}; {moved}: {reg.reason}", file=out)
    if not args.quiet:
        _print_run_links(result, out)
    if result.served is not None:
        _print_served(result.served, out)
        out.flush()
        _serve_in_foreground(foreground, result.served.app)
    return 0


def _print_run_links(result, out) -> None:
    if result.study is not None:
        print(
            f"Best trial's MLflow run: {result.study.best_mlflow_run_id}  (study run: "
            f"{result.mlflow_run_id})",
            file=out,
        )
        if result.study.refit_mlflow_run_id:
            print(
                f"Model (the best configuration trained again, tune.refit, MLflow run "
                f"{result.study.refit_mlflow_run_id}): {result.model_uri}",
                file=out,
            )
        else:
            print(f"Model (best trial's final checkpoint): {result.model_uri}", file=out)
    else:
        print(f"MLflow run: {result.mlflow_run_id}  model: {result.model_uri}", file=out)
    if result.tracking_uri.startswith("sqlite:"):
        print("Open the MLflow UI with: orch ui   (http://127.0.0.1:5000)", file=out)
    elif result.study is None:
        print(f"MLflow tracking server: {result.tracking_uri}", file=out)


def _capture(command: str, args):
    """From here on the libraries' output goes to a log file (or stderr with --verbose).

    Only when ``orch`` is the process (``main()`` without argv): an in-process caller (a
    test, a notebook) keeps its own stdout and stderr."""
    from orchestrator.runtime import orch_home
    from orchestrator.terminal import capture, current

    if not args.own_process:
        return current()
    # ORCH_LOG_TO_STDERR=1: a driver whose stderr is already a log (a queued job's Ray job
    # log, which `orch logs` shows) keeps the chatter there
    verbose = args.verbose or os.environ.get("ORCH_LOG_TO_STDERR") == "1"
    return capture(command, verbose=verbose, log_dir=orch_home() / "logs")


def _print_served(served, stream=None) -> None:
    from orchestrator.terminal import current

    out = stream or current().out
    for v in served.variants:
        print(
            f"{v.model_name} v{v.version} {v.quantization} ({v.runtime}): {v.metric} "
            f"{v.value:.4f} (fp32 {v.fp32_value:.4f}), {v.size_bytes / 1e6:.2f} MB "
            f"(fp32 {v.fp32_size_bytes / 1e6:.2f} MB), {v.latency_ms_batch_1:.2f} ms at batch 1, "
            f"{v.latency_ms_max_batch:.2f} ms at batch {v.max_batch_size}",
            file=out,
        )
        if v.fallback:
            print(v.describe_fallback(), file=out)
    if served.endpoint is None:
        print(
            f"Wrote {served.config_path}; deploy it with: serve deploy {served.config_path}",
            file=out,
        )
        return
    versions = ", ".join(
        f"{a} v{v}" if a != "model" else f"v{v}" for a, v in served.versions.items()
    )
    print(f"Serving {served.model_name} ({versions}) at {served.endpoint}", file=out)
    print(
        f'  POST {served.endpoint}/predict  {{"instances": [[...]]}}   docs: '
        f"{served.endpoint}/docs   OIP v2: {served.v2}/models/{served.model_name}/infer",
        file=out,
    )
    if served.grpc:
        print(f"  gRPC (OIP v2): {served.grpc}  metadata application: orch-v2", file=out)


def _ingress_note(served, err) -> None:
    """One line on stderr when Serve there runs Ray's Python proxy (JSON output too)."""
    if served is not None and served.ingress == "proxy":
        from cluster.ingress import HAPROXY_ADVICE

        print(f"note: {HAPROXY_ADVICE}", file=err, flush=True)


def _plan(path: str | None):
    """The ``--plan`` file as a RunPlan; None without one.

    Raises:
        UsageError: the file is missing or is not a plan.
    """
    if path is None:
        return None
    from pydantic import ValidationError

    from orchestrator.plan import RunPlan

    try:
        return RunPlan.read(path)
    except (OSError, ValidationError) as exc:
        raise UsageError(f"--plan {path}: not a readable plan ({first_line(exc)})") from None


def _check_result_file(path: str | None) -> None:
    """Raises UsageError when ``--result-file`` names a place that cannot be written."""
    if path is None:
        return
    folder = Path(path).absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--result-file {path}: {first_line(exc)}") from None
    if Path(path).is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"--result-file {path}: not a file this user can write")


def _record_outcome(path: str | None, document: str, *, after_failure: bool = False) -> None:
    """Write the outcome to ``--result-file``. Raises UsageError when it cannot be written,
    unless the run already failed (its own error is the one to report)."""
    if not path:
        return
    from orchestrator.result_file import write_outcome

    try:
        write_outcome(path, document)
    except OSError as exc:
        if not after_failure:
            raise UsageError(f"--result-file {path}: {first_line(exc)}") from None


def _foreground(args):
    """A ForegroundServing when this command serves in its own process, else None."""
    from orchestrator.address import given_address
    from orchestrator.foreground import ForegroundServing, in_foreground

    return ForegroundServing() if in_foreground(given_address(args.address)) else None


def _arming(display, foreground):
    """The event callback: the display, and Ctrl-C turns into a clean stop once serving starts."""

    from orchestrator.events import StageStarted

    def on_event(event) -> None:
        if foreground and isinstance(event, StageStarted) and event.stage == "serve":
            foreground.arm()
        if display:
            display(event)

    return on_event


def _serve_in_foreground(foreground, app: str) -> None:
    from orchestrator.terminal import current

    if foreground is None:
        return
    err = current().err
    print(f"Serving {app} until Ctrl-C ...", file=err, flush=True)
    foreground.wait_then_shutdown()
    print("Serve stopped.", file=err, flush=True)


def _cmd_serve(args) -> int:
    if args.down:
        return _cmd_serve_down(args)
    term = _capture("serve", args)
    display = None if args.json else RunDisplay(Console(file=term.err))
    foreground = _foreground(args) if args.emit_config is None else None
    try:
        served = Client(args.address, show_worker_logs=args.verbose).serve(
            args.spec, on_event=_arming(display, foreground), emit_config=args.emit_config
        )
    finally:
        if display:
            display.close()
    if args.json:
        print(served.model_dump_json(), file=term.out, flush=True)
    else:
        _print_served(served, term.out)
        term.out.flush()
    _ingress_note(served, term.err)
    if served.endpoint is not None:
        _serve_in_foreground(foreground, served.app)
    return 0


def _cmd_serve_down(args) -> int:
    from orchestrator.exceptions import SpecError
    from orchestrator.loader import load_spec

    if args.emit_config is not None:
        raise SpecError("--down and --emit-config do not go together: choose one")
    term = _capture("serve", args)
    client = Client(args.address, show_worker_logs=args.verbose)
    spec = load_spec(args.spec)
    stopped = client.stop_serving(spec)  # SpecError when there is no serve section
    app = spec.serve.name
    if args.json:
        print(json.dumps({"app": app, "stopped": stopped}), file=term.out, flush=True)
    else:
        print(f"Stopped serving {app}." if stopped else f"{app} was not being served.",
              file=term.out, flush=True)  # fmt: skip
    return 0


class _ServerRegistry:
    """``orch models`` through the queue server: ``Client``'s registry calls, by HTTP."""

    def __init__(self, url: str):
        from orchestrator.queue_client import QueueClient

        self.queue = QueueClient(server=url)

    def list_models(self, uri):
        return self.queue.list_models()

    def show_model(self, name, uri):
        return self.queue.show_model(name)

    def promote(self, name, version, alias, uri):
        self.queue.promote(name, version, alias)

    def rollback(self, name, alias, uri):
        return self.queue.rollback(name, alias)


def _cmd_models(args) -> int:
    server = args.server or os.environ.get("ORCH_SERVER")
    if server and args.tracking_uri:
        raise UsageError("--tracking-uri and --server (or $ORCH_SERVER) do not go together")
    client = _ServerRegistry(server) if server else Client()
    uri = args.tracking_uri
    action = args.models_command
    if action == "list":
        models = client.list_models(uri)
        if args.json:
            print(json.dumps([m.model_dump(mode="json") for m in models]))
        elif not models:
            print("no registered models yet (orch run registers one per run)")
        for model in [] if args.json else models:
            aliases = "  ".join(f"@{a}=v{v}" for a, v in model.aliases.items()) or "no alias"
            print(f"{model.name}: {model.versions} versions, latest v{model.latest}, {aliases}")
    elif action == "show":
        shown = client.show_model(args.name, uri)
        if args.json:
            print(shown.model_dump_json())
            return 0
        holders = {v: a for a, v in shown.aliases.items()}
        print(shown.name)
        for version in shown.versions:
            alias = f"  @{holders[version.version]}" if version.version in holders else ""
            print(
                f"  v{version.version}{alias}  {format_metrics(version.metrics)}  "
                f"run {version.tags.get('orch.mlflow_run_id', version.run_id)}"
            )
            for quantization, v in version.served_variants.items():
                # a model ONNX cannot export serves in PyTorch float32 whatever was asked
                how = f" (PyTorch float32: {v.fallback})" if v.fallback else ""
                print(
                    f"      served as {quantization}{how}: {v.metric} {v.value:.4f} "
                    f"(fp32 {v.fp32_value:.4f}), {v.size_bytes / 1e6:.2f} MB, "
                    f"{v.latency_ms_batch_1:.2f} ms at batch 1"
                )
    elif action == "promote":
        client.promote(args.name, args.version, args.alias, uri)
        print(f"{args.name}@{args.alias} -> version {args.version}")
    else:
        moved = client.rollback(args.name, args.alias, uri)
        print(
            f"{args.name}@{args.alias}: version {moved.from_version} -> version {moved.to_version}"
        )
    return 0


def _cmd_schema(args) -> int:
    from orchestrator.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_ui(args) -> int:
    from orchestrator.mlflow_ui import ui_command

    command = ui_command(args.host, args.port, read_only=args.read_only)
    mode = ", read-only" if args.read_only else ""
    print(f"MLflow UI on http://{args.host}:{args.port}{mode} (Ctrl-C to stop)", file=sys.stderr)
    os.execv(command[0], command)
    return 0  # not reached


def _cmd_dashboard(args) -> int:
    from orchestrator.cluster_view import dashboard_info

    info = dashboard_info(args.address)
    if args.json:
        print(info.model_dump_json())
        return 0
    print(f"Ray dashboard: {info.dashboard_url}")
    if info.token_path:
        print(f"It asks for Ray's token: paste the contents of {info.token_path}")
    elif info.token_in_env:
        print("It asks for Ray's token: the one in $RAY_AUTH_TOKEN")
    return 0


_COMMANDS = {
    "dashboard": _cmd_dashboard,
    "validate": _cmd_validate,
    "run": _cmd_run,
    "schema": _cmd_schema,
    "ui": _cmd_ui,
    "models": _cmd_models,
    "serve": _cmd_serve,
    **cli_queue.COMMANDS,
    **cli_server.COMMANDS,
    **cli_users.COMMANDS,
    **cli_cluster.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    from orchestrator.home import private_umask

    private_umask()  # what orch (and a job's driver) writes is its user's only
    args = _parser().parse_args(argv)
    args.own_process = argv is None  # the orch command itself, not an in-process call
    exit_code = _main(args)
    if args.own_process and args.command in ("run", "serve"):
        from orchestrator.terminal import leave

        leave(exit_code)  # skips a 3 s interpreter teardown with nothing left to do
    return exit_code


def _main(args) -> int:
    from orchestrator.terminal import current

    try:
        if args.command in ("run", "serve"):
            # before anything imports Ray: a malformed address stops here, and a recorded
            # local cluster's token settings go into the environment
            Client(args.address).address  # noqa: B018
        return _COMMANDS[args.command](args)
    except OrchestratorError as exc:
        term = current()
        hint = term.failure_hint()
        if hint:
            print(hint, file=term.err, flush=True)
        print(f"error: {exc}", file=term.err, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        resume = ""
        if args.command == "run" and not getattr(args, "json", False):
            resume = f"; a tuning study continues with: orch run {args.spec} --resume"
        print(f"interrupted{resume}", file=current().err, flush=True)
        return 130
    except Exception as exc:  # a bug: the traceback goes to the log, one line to the user
        term = current()
        if term.log_path is None:
            raise
        import traceback

        traceback.print_exc()  # into the log file (fd 2 points there)
        sys.stderr.flush()
        if term.failure_hint():
            print(term.failure_hint(), file=term.err, flush=True)
        print(f"error: internal error: {type(exc).__name__}: {exc}", file=term.err, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
