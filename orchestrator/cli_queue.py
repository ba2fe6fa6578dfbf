"""`orch submit | queue | list | status | logs | cancel | retry`: the job queue's CLI.

Thin over ``QueueClient`` (the object ``Client.queue_client`` returns), and light: these
commands import neither torch nor Ray Train, so they answer in well under a second.
"""

from __future__ import annotations

import time

from jobs.profiling import StepProfile
from orchestrator.address import ADDRESS_HELP
from orchestrator.scheduling.record import JobInfo
from orchestrator.scheduling.spec import priority_label

STATES = (
    "queued",
    "starting",
    "running",
    "preempting",
    "cancelling",
    "succeeded",
    "failed",
    "cancelled",
)


def add_commands(sub) -> None:
    """The queue's commands (``orch server`` is ``cli_server``, ``orch cluster``
    ``cli_cluster``)."""
    _add_queue_commands(sub)


def _with_address(parser):
    parser.add_argument(
        "--address",
        default=None,
        help=ADDRESS_HELP.format(default="the embedded local cluster"),
    )
    parser.add_argument(
        "--server",
        default=None,
        help="the queue server's URL (e.g. an SSH tunnel's http://127.0.0.1:PORT); default "
        "$ORCH_SERVER, else the server of --address's cluster",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    return parser


def _add_queue_commands(sub) -> None:
    submit = _with_address(sub.add_parser("submit", help="queue a pipeline on the cluster"))
    submit.add_argument("spec", help="pipeline YAML file")
    submit.add_argument(
        "--priority", default=None, help="low | normal | high | an integer (default: the spec's)"
    )
    submit.add_argument("--name", default=None, help="job name (default: the pipeline's)")
    submit.add_argument("--queue", default=None, help="queue label (default: the spec's)")
    submit.add_argument(
        "--idempotency-key",
        default=None,
        help="submitting again with the same key returns the first job instead of a new one",
    )
    _with_address(
        sub.add_parser("queue", help="queued jobs in admission order, with why each waits")
    )
    listing = _with_address(sub.add_parser("list", help="all jobs"))
    listing.add_argument("--state", choices=STATES, default=None, help="only jobs in this state")
    for command, text in (
        ("status", "one job: state, demand, attempts, history"),
        ("cancel", "cancel a queued or running job"),
        ("retry", "submit a failed or cancelled job again with its original spec"),
    ):
        _with_address(sub.add_parser(command, help=text)).add_argument("job", help="job id")
    deployed = _with_address(
        sub.add_parser("deployments", help="Serve applications queued jobs left running")
    )
    deployed.add_argument("--down", metavar="APP", help="take APP down (its owner or an admin)")
    logs = _with_address(sub.add_parser("logs", help="a job's logs (every attempt)"))
    logs.add_argument("job", help="job id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")


def _queue(args):
    from orchestrator.queue_client import QueueClient

    return QueueClient(args.address, server=args.server)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _demand(job: JobInfo) -> str:
    from orchestrator.scheduling.demand import format_resources

    return format_resources(job.demand).strip("{}") or "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
        for r in rows
    )


def cmd_submit(args) -> int:
    job = _queue(args).submit(
        args.spec,
        priority=args.priority,
        name=args.name,
        queue=args.queue,
        idempotency_key=args.idempotency_key,
    )
    info = job.info
    if args.json:
        print(info.model_dump_json(exclude={"spec_text"}))
    else:
        print(
            f"{info.id} {info.state}: {info.name}, priority {priority_label(info.priority)}, "
            f"needs {{{_demand(info)}}}; follow it with: orch status {info.id}"
        )
    return 0


def cmd_queue(args) -> int:
    entries = _queue(args).queue()
    if args.json:
        import json

        print(
            json.dumps([{"position": p, **j.model_dump(exclude={"spec_text"})} for p, j in entries])
        )
        return 0
    if not entries:
        print("the queue is empty")
        return 0
    now = time.time()
    rows = [["#", "JOB", "NAME", "OWNER", "PRIORITY", "WAITED", "NEEDS", "WHY IT WAITS"]]
    for position, job in entries:
        rows.append(
            [
                str(position),
                job.id,
                job.name,
                f"{job.owner} ({job.team})",
                priority_label(job.priority),
                _age(now - job.enqueued_at),
                _demand(job),
                job.reason or "-",
            ]
        )
    print(_table(rows))
    return 0


def cmd_list(args) -> int:
    jobs = _queue(args).jobs(args.state)
    if args.json:
        import json

        print(json.dumps([j.model_dump(exclude={"spec_text"}) for j in jobs]))
        return 0
    if not jobs:
        print("no jobs" + (f" in state {args.state}" if args.state else ""))
        return 0
    now = time.time()
    rows = [["JOB", "NAME", "OWNER", "STATE", "PRIORITY", "QUEUE", "AGE", "DETAIL"]]
    for job in jobs:
        rows.append(
            [
                job.id,
                job.name,
                f"{job.owner} ({job.team})",
                job.state,
                priority_label(job.priority),
                job.queue,
                _age(now - job.submitted_at),
                job.reason or "-",
            ]
        )
    print(_table(rows))
    return 0


def cmd_status(args) -> int:
    job = _queue(args).info(args.job)
    if args.json:
        print(job.model_dump_json(exclude={"spec_text"}))
        return 0
    print(f"{job.id}  {job.name}  {job.state}: {job.reason}")
    print(f"  owner {job.owner} (team {job.team})")
    print(
        f"  pipeline {job.pipeline} ({job.spec_path}), queue {job.queue}, priority "
        f"{priority_label(job.priority)}{'' if job.preemptible else ', not preemptible'}"
    )
    print(
        f"  demand {{{_demand(job)}}}"
        + (f", {job.concurrent_trials} trials at once" if job.concurrent_trials else "")
    )
    print(
        f"  attempts {job.attempt}, preempted {job.preemptions} times; Ray jobs: "
        f"{', '.join(job.submission_ids) or '-'}"
    )
    if job.result:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in job.result.get("metrics", {}).items())
        print(f"  result: {metrics}; MLflow run {job.result.get('mlflow_run_id')}")
        for step in job.result.get("profile", []):  # train.profile's breakdown, per rank
            print(f"  {StepProfile.model_validate(step).describe()}")
    for t in job.history:
        stamp = time.strftime("%H:%M:%S", time.localtime(t.at))
        print(f"  {stamp} {t.state}" + (f": {t.reason}" if t.reason else ""))
    return 0


def cmd_logs(args) -> int:
    job = _queue(args).job(args.job)
    for line in job.logs(follow=args.follow):
        print(line, flush=args.follow)
    return 0


def cmd_cancel(args) -> int:
    job = _queue(args).cancel(args.job)
    print(
        job.model_dump_json(exclude={"spec_text"})
        if args.json
        else f"{job.id} {job.state}: {job.reason}"
    )
    return 0


def cmd_retry(args) -> int:
    job = _queue(args).retry(args.job).info
    print(
        job.model_dump_json(exclude={"spec_text"})
        if args.json
        else f"{job.id} {job.state}: retry of {args.job}; follow it with: orch status {job.id}"
    )
    return 0


def cmd_deployments(args) -> int:
    from orchestrator.scheduling.demand import format_resources

    client = _queue(args)
    if args.down:
        taken = client.undeploy(args.down)
        print(taken.model_dump_json() if args.json else f"{taken.app} taken down; team "
              f"{taken.team} is no longer charged {format_resources(taken.resources)}")  # fmt: skip
        return 0
    listed = client.deployments()
    if args.json:
        import json

        print(json.dumps([d.model_dump() for d in listed]))
        return 0
    rows = [["APP", "TEAM", "OWNER", "JOB", "CHARGED"]]
    rows += [[d.app, d.team, d.owner, d.job_id, format_resources(d.resources)] for d in listed]
    print(_table(rows) if listed else "no application left running by queued jobs")
    return 0


COMMANDS = {
    "submit": cmd_submit,
    "queue": cmd_queue,
    "list": cmd_list,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "deployments": cmd_deployments,
}

__all__ = ["COMMANDS", "add_commands"]
