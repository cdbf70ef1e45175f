"""`kiln cluster up|down|status`: a head and worker nodes on this machine (127.0.0.1), for trying
`kiln submit` against a real multi-node Ray cluster; `down` stops only what `up` started."""

from __future__ import annotations

import argparse

DEFAULT_DIR = "/tmp/kiln-cluster"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cluster", help="start/stop a local multi-node Ray cluster (head + workers on 127.0.0.1)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"the nodes' temporary folders, token and state (default {DEFAULT_DIR})")
    p.add_argument("--workers", type=int, default=1, help="worker nodes besides the head (default 1)")
    p.add_argument("--head-cpus", type=int, default=1, help="CPUs the head offers to tasks (default 1)")
    p.add_argument("--worker-cpus", type=int, default=1, help="CPUs of each worker node (default 1)")
    p.add_argument("--port", type=int, default=0, help="GCS port of the head (default: a free one)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard/job server port (default 8265)")
    p.add_argument("--object-store-memory", default="200MB", help="object store of each node (default 200MB)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from common.errors import KilnError
    from common.yamlconf import parse_size
    from pipeline.cluster import LocalCluster

    existing = LocalCluster.load(args.dir)
    if args.action == "down":
        if existing is None or not existing.nodes:
            print(f"no cluster started from {args.dir}")
            return 0
        existing.down()
        print(f"stopped the local cluster of {args.dir}")
        return 0
    if args.action == "status":
        if existing is None or not existing.nodes:
            print(f"no cluster started from {args.dir}")
            return 1
        try:
            alive = existing.alive_nodes()
        except Exception as e:
            print(f"cluster of {args.dir}: head {existing.dashboard_url} does not answer ({type(e).__name__})")
            return 1
        print(f"cluster of {args.dir}: {alive} alive nodes, dashboard {existing.dashboard_url}")
        return 0
    if existing is not None and existing.nodes:
        raise KilnError(f"a cluster from {args.dir} is already up (dashboard {existing.dashboard_url}); "
                        "`kiln cluster down` first")
    cluster = LocalCluster(root=args.dir, gcs_port=args.port, dashboard_port=args.dashboard_port,
                           object_store_bytes=parse_size(args.object_store_memory))
    try:
        cluster.up(head_cpus=args.head_cpus, workers=args.workers, worker_cpus=args.worker_cpus)
    except BaseException:
        cluster.down()
        raise
    print(f"local Ray cluster up: head + {args.workers} worker node(s) on 127.0.0.1\n"
          f"  dashboard and job server: {cluster.dashboard_url}\n"
          f"  GCS address:              {cluster.gcs_address}\n"
          f"  token file:               {cluster.token_file}\n"
          f"submit with: RAY_AUTH_TOKEN_PATH={cluster.token_file} kiln submit CONFIG --address {cluster.dashboard_url}\n"
          f"stop with:   kiln cluster down --dir {args.dir}")
    return 0
