"""`orch submit | queue | list | status | logs | cancel | retry | server`: the job queue's CLI.

Thin over ``QueueClient`` (the object ``Client.queue_client`` returns), and light: these
commands import neither torch nor Ray Train, so they answer in well under a second.
"""

from __future__ import annotations

import time

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
    """The queue's commands, then ``server`` and ``cluster``."""
    _add_queue_commands(sub)
    _add_server(sub)
    _add_cluster(sub)


def _with_address(parser):
    parser.add_argument(
        "--address",
        default=None,
        help=ADDRESS_HELP.format(default="the embedded local cluster"),
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
    logs = _with_address(sub.add_parser("logs", help="a job's logs (every attempt)"))
    logs.add_argument("job", help="job id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")


def _add_server(sub) -> None:
    server = sub.add_parser(
        "server", help="run the queue server (started automatically on first use)"
    )
    server.add_argument("--state-dir", default=None, help="default: $ORCH_HOME/queue")
    server.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    server.add_argument("--ray-address", default=None, help=ADDRESS_HELP.format(default="auto"))
    server.add_argument(
        "--aging-per-minute",
        type=float,
        default=1.0,
        help="priority points a queued job gains per minute waited (default 1)",
    )
    server.add_argument(
        "--no-preemption", action="store_true", help="never stop running jobs for others"
    )
    server.add_argument("--poll-s", type=float, default=1.0, help="scheduler pass interval")


def _add_cluster(sub) -> None:
    cluster = sub.add_parser(
        "cluster", help="a real multi-node Ray on this machine, under $ORCH_HOME/cluster"
    )
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = csub.add_parser("up", help="start a head and worker raylets, each its own Ray node")
    up.add_argument("--nodes", type=int, default=2, help="nodes in all, head included (2)")
    up.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each node offers (1)")
    up.add_argument(
        "--ingress",
        choices=("haproxy", "proxy"),
        default=None,
        help="how Serve takes HTTP on this cluster: haproxy (default, $ORCH_SERVE_INGRESS) "
        "or Ray's Python proxy",
    )
    up.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="a label on every node"
    )
    status = csub.add_parser("status", help="the nodes: PIDs, alive, Ray node ids, resources")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--address",
        default=None,
        help=ADDRESS_HELP.format(default="the cluster recorded under $ORCH_HOME/cluster"),
    )
    csub.add_parser("down", help="stop the queue server and the nodes orch started (by PID)")


def _queue(args):
    from orchestrator.queue_client import QueueClient

    return QueueClient(args.address)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _demand(job: JobInfo) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(job.demand.items())) or "-"


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
    rows = [["#", "JOB", "NAME", "PRIORITY", "WAITED", "NEEDS", "WHY IT WAITS"]]
    for position, job in entries:
        rows.append(
            [
                str(position),
                job.id,
                job.name,
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
    rows = [["JOB", "NAME", "STATE", "PRIORITY", "QUEUE", "AGE", "DETAIL"]]
    for job in jobs:
        rows.append(
            [
                job.id,
                job.name,
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


def cmd_server(args) -> int:
    from pathlib import Path

    from orchestrator.queue_client import queue_dir
    from orchestrator.scheduling.policy import PolicyConfig
    from orchestrator.scheduling.server import serve_forever

    return serve_forever(
        Path(args.state_dir) if args.state_dir else queue_dir(),
        host=args.host,
        port=args.port,
        ray_address=args.ray_address,
        policy=PolicyConfig(
            aging_per_minute=args.aging_per_minute, preemption=not args.no_preemption
        ),
        poll_s=args.poll_s,
    )


def cmd_cluster(args) -> int:
    from orchestrator.cli_cluster import cmd_cluster as run

    return run(args)


COMMANDS = {
    "submit": cmd_submit,
    "queue": cmd_queue,
    "list": cmd_list,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "server": cmd_server,
    "cluster": cmd_cluster,
}

__all__ = ["COMMANDS", "add_commands"]
