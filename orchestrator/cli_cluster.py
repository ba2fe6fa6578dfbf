"""``orch cluster up | status | down``: parse, call the SDK, print (what it does is in
``orchestrator.local_cluster``, behind ``Client.cluster_up/status/down``)."""

from __future__ import annotations

from orchestrator.client import Client


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
