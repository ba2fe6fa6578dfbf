"""``orch cluster up | status | down``: parse, call the SDK, print (what it does is in
``orchestrator.local_cluster``, behind ``Client.cluster_up/status/down``)."""

from __future__ import annotations

from orchestrator.address import ADDRESS_HELP
from orchestrator.client import Client


def add_command(sub) -> None:
    """``orch cluster``'s parser."""
    _add_cluster(sub)


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


def cmd_cluster(args) -> int:
    client = Client()
    if args.cluster_command == "up":
        return _print_started(client.cluster_up(args.nodes, args.cpus_per_node, args.label,
                                                ingress=args.ingress))  # fmt: skip
    if args.cluster_command == "status":
        return _print_status(client.cluster_status(args.address), args.json)
    return _print_stopped(client.cluster_down())


def _print_started(up) -> int:
    print(
        f"{up.nodes_alive} nodes up: head pid {up.head.pid}, workers "
        + (", ".join(f"{w.name} pid {w.pid}" for w in up.workers) or "none")
    )
    print(
        f"  Ray {up.gcs_address} (orch run --address auto), dashboard "
        f"{up.dashboard_url}; token {up.token_path}"
    )
    print(f"  Serve ingress: {up.ingress} (on the head)")
    return 0


def _print_status(status, as_json: bool) -> int:
    from orchestrator.cluster_view import cluster_dir

    if status is None:
        print(f"no cluster recorded under {cluster_dir()}; start one with: orch cluster up")
        return 1
    if as_json:
        print(status.model_dump_json(exclude_none=True))
        return 0
    if status.head is None:  # a cluster orch did not start: Ray's nodes only
        print(f"Ray cluster at {status.dashboard_url}: {len(status.ray_nodes)} nodes")
        for n in status.ray_nodes:
            print(f"  Ray node {n.node_id[:12]}  {n.state}  {n.cpus:g} CPU")
        return 0
    head = status.head
    print(
        f"head  pid {head.pid}  {'alive' if head.alive else 'DOWN'}  {head.gcs_address}  "
        f"{head.dashboard_url}"
    )
    for w in status.workers or []:
        print(f"{w.name}  pid {w.pid}  {'alive' if w.alive else 'DOWN'}")
    for n in status.ray_nodes:
        node = n.labels.get("orch.node", "")
        print(f"  Ray node {n.node_id[:12]}  {n.state}  {n.cpus:g} CPU  {node}")
    return 0


def _print_stopped(stopped) -> int:
    from orchestrator.cluster_view import cluster_dir

    if stopped.server_pid is not None:
        print(f"stopped the orch server (pid {stopped.server_pid})")
    for w in stopped.workers:
        print(f"stopped {w.name} (pid {w.pid})")
    head = stopped.head
    print(
        f"stopped the head (pid {head.pid})" if head else f"no head recorded under {cluster_dir()}"
    )
    return 0


COMMANDS = {"cluster": cmd_cluster}
