"""A Ray cluster of several nodes on one machine, started with `ray start`, and stopped again.

`make cluster-up` / `make cluster-down` and tests/test_cluster.py use it to try `kiln submit`
against a real head (GCS, dashboard, job server) and real worker nodes on 127.0.0.1.

Two `ray start` on one machine collide unless every node has its own temporary folder and
the ports that have fixed defaults (GCS 6379, dashboard 8265, dashboard agent 52365, the
client server 10001, ...) are chosen apart; other people's Ray instances on the machine may
hold the defaults, so every port not given is taken free from the OS.

`ray stop` stops every Ray process of the machine, other people's included. This module
stops only its own: the processes whose command line names one of its nodes' temporary
folders, and their children (the workers), found through psutil. A node can also be killed
alone (SIGKILL), which is how the tests simulate a worker machine that dies mid-stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.errors import KilnError

STATE = "cluster.json"
TOKEN = "auth_token"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


# Ray 2.60 does not keep a node on 127.0.0.1 when told to: `ray start --node-ip-address
# 127.0.0.1` (ray/scripts/scripts.py) and `ray.init(address="127.0.0.1:PORT")`
# (services.canonicalize_bootstrap_address) swap a loopback address for the machine's routable
# one (services.resolve_ip_for_localhost), and the GCS, the raylet's node manager and object
# manager, the core workers, the dashboard agent and the metrics exporter then listen on every
# interface; each of them listens on 127.0.0.1 alone only when the node's address *is*
# 127.0.0.1. Ray keeps a loopback address where it believes multi-node clusters are off
# (LOOPBACK_ONLY_ENV=0, its switch for Windows and macOS): that is set for every process of the
# nodes (they inherit it, the drivers of Ray jobs included). `ray start` itself refuses to start
# a worker node with that switch off, so it runs through this launcher, which keeps the address
# it is given and lets the worker node start.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_RAY_START_AS_GIVEN = (
    "import sys; import ray._private.ray_constants as constants, ray._private.services as services; "
    "services.resolve_ip_for_localhost = lambda host: host; constants.ENABLE_RAY_CLUSTER = True; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def _ray_start() -> list[str]:
    """`ray start` of this interpreter's environment (PATH may lack the venv), address kept."""
    return [sys.executable, "-c", _RAY_START_AS_GIVEN, "start"]


def join_on_loopback(address: str) -> None:
    """Before `ray.init(address=...)` from a process outside the nodes: a GCS address on
    127.0.0.1 (a `kiln cluster up` cluster) is kept as it is, not swapped for the machine's
    address, where nothing listens (see LOOPBACK_ONLY_ENV)."""
    host = address.rpartition(":")[0].strip("[]")
    if "://" in address or host not in ("127.0.0.1", "localhost", "::1"):
        return
    import ray._private.ray_constants as constants  # private; read at call time by services

    os.environ[LOOPBACK_ONLY_ENV] = "0"
    constants.ENABLE_RAY_CLUSTER = False


@dataclass
class LocalCluster:
    """A head and worker nodes on 127.0.0.1, each with its own temporary folder under `root`.

    The state (ports, nodes) is kept in `root/cluster.json` so that `down()` in another
    process (make cluster-down) finds what `up()` started."""

    root: str
    gcs_port: int = 0
    dashboard_port: int = 0
    token: str = ""
    nodes: list[str] = field(default_factory=list)
    object_store_bytes: int = 200 << 20
    client_port: int = 0  # the head's Ray Client proxy, which names no temporary folder

    @property
    def gcs_address(self) -> str:
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def token_file(self) -> Path:
        return Path(self.root) / TOKEN

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        Path(self.root).mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in asdict(self).items() if k != "token"}
        (Path(self.root) / STATE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, root: str | os.PathLike) -> LocalCluster | None:
        path = Path(root) / STATE
        if not path.exists():
            return None
        cluster = cls(**json.loads(path.read_text()))
        if cluster.token_file.exists():
            cluster.token = cluster.token_file.read_text().strip()
        return cluster

    # ------------------------------------------------------------------ starting

    def _env(self) -> dict[str, str]:
        """Token authentication on, with this cluster's own token (never ~/.ray/auth_token,
        which other clusters of the machine may use). This interpreter's bin folder comes first on
        PATH, as on a real node with its environment activated, so a job's `python` is it."""
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env[LOOPBACK_ONLY_ENV] = "0"  # every process of the node keeps 127.0.0.1 (see above)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        env.pop("RAY_ADDRESS", None)
        return env

    def _node_dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _start(self, name: str, args: list[str], timeout: float) -> None:
        Path(self._node_dir(name)).mkdir(parents=True, exist_ok=True)
        log = Path(self.root) / f"{name}.log"
        command = [*_ray_start(), "--node-ip-address", HOST, "--temp-dir", self._node_dir(name),
                   "--disable-usage-stats", "--object-store-memory", str(self.object_store_bytes),
                   "--dashboard-agent-listen-port", str(free_port()),
                   "--dashboard-agent-grpc-port", str(free_port()),
                   "--runtime-env-agent-port", str(free_port()),
                   "--metrics-export-port", str(free_port()), *args]
        self.nodes.append(name)
        self.save()  # saved before starting, so a half-started node is still stopped by down()
        with open(log, "w") as out:
            try:
                result = subprocess.run(command, env=self._env(), stdout=out, stderr=subprocess.STDOUT,
                                        timeout=timeout)
            except subprocess.TimeoutExpired:
                raise KilnError(f"`ray start` for node {name} did not finish in {timeout:.0f} s; see {log}") from None
        if result.returncode != 0:
            tail = "\n".join(log.read_text().strip().splitlines()[-5:])
            raise KilnError(f"`ray start` for node {name} failed (exit {result.returncode}); see {log}:\n{tail}")

    def up(self, head_cpus: int = 1, workers: int = 1, worker_cpus: int = 1, timeout: float = 120) -> None:
        """Start the head (with dashboard and job server) and `workers` worker nodes."""
        if not self.token:
            self.token = secrets.token_hex(16)
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.gcs_port = self.gcs_port or free_port()
        self.client_port = self.client_port or free_port()
        self.dashboard_port = self.dashboard_port or free_port()
        for what, port in (("GCS", self.gcs_port), ("dashboard", self.dashboard_port)):
            if not _port_free(port):
                raise KilnError(f"{what} port {port} is in use on {HOST} (another Ray?); choose another one")
        self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", str(head_cpus),
                             "--include-dashboard", "true", "--dashboard-host", HOST,
                             "--dashboard-port", str(self.dashboard_port),
                             "--ray-client-server-port", str(self.client_port)], timeout)
        for _ in range(workers):
            self.add_worker(worker_cpus, timeout)
        self.wait_for_nodes(1 + workers, timeout)

    def add_worker(self, num_cpus: int = 1, timeout: float = 120) -> str:
        name = f"worker{sum(1 for n in self.nodes if n.startswith('worker')) + 1}"
        self._start(name, ["--address", self.gcs_address, "--num-cpus", str(num_cpus)], timeout)
        return name

    def alive_nodes(self) -> int:
        """Alive nodes as the head's dashboard sees them (with the token)."""
        import requests

        r = requests.get(f"{self.dashboard_url}/nodes?view=summary", timeout=5,
                         headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        summary = r.json()["data"]["summary"]
        return sum(1 for n in summary if n.get("raylet", {}).get("state") == "ALIVE")

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        """Until the head sees `count` alive nodes and its job agent answers."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.alive_nodes() >= count:
                    return
            except Exception as e:  # the dashboard is still starting
                last = e
            time.sleep(1)
        raise KilnError(f"the local cluster did not show {count} alive nodes within {timeout:.0f} s"
                        + (f" ({last})" if last else ""))

    # ------------------------------------------------------------------ stopping

    def node_processes(self, name: str) -> list:
        """The node's processes: those naming its temporary folder, and their descendants."""
        import psutil

        marker = self._node_dir(name).rstrip("/") + "/"
        # The head's Ray Client proxy names no temporary folder: it is found by its port and
        # the head's GCS port instead.
        proxy = {f"--port={self.client_port}", "ray.util.client.server"} if name == "head" and self.client_port else None
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                args = proc.info["cmdline"] or []
                is_proxy = proxy is not None and proxy <= set(args) and any(
                    a.startswith("--address=") and a.endswith(f":{self.gcs_port}") for a in args)
                if is_proxy or any(marker in arg or arg.endswith(marker.rstrip("/")) for arg in args):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def kill_node(self, name: str) -> int:
        """SIGKILL every process of one node at once, as if its machine died. Returns how many."""
        import psutil

        procs = self.node_processes(name)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        return len(procs)

    def stop_node(self, name: str, grace: float = 5) -> None:
        """SIGTERM, then SIGKILL what is left after `grace` seconds (raylet and GCS do not
        always exit on SIGTERM alone, which is why `ray stop` has --force)."""
        import psutil

        procs = self.node_processes(name)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)

    def down(self) -> None:
        """Stop the workers, then the head; only the processes this cluster started."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self.stop_node(name)
        self.nodes = []
        self.save()
