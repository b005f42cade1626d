"""A multi-node Ray cluster on one machine for the cluster tests, owned by a helper process.

`LocalCluster` starts `python tests/ray_cluster.py` with a private RAY_TMPDIR (its sessions, sockets and the
`ray_current_cluster` address file never touch another Ray on this machine) and its own token (RAY_AUTH_MODE=
token, RAY_AUTH_TOKEN_PATH). The helper holds a `ray.cluster_utils.Cluster` (head with no CPUs, dashboard on) and
obeys one JSON command a line on stdin: add/remove a worker node, list actors or tasks through Ray's state API,
shut down. Drivers (`dfbatch score` subprocesses) run with `env()`: the same token and RAY_ADDRESS.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, *, dashboard: bool = True, object_store_mb: int = 150, env: dict | None = None):
        """`env`: more environment for the nodes' processes and the drivers (e.g. tests/worker_hooks.hook_env)."""
        self.tmp = tempfile.mkdtemp(prefix="dfbc-", dir="/tmp")  # short: Ray's unix socket paths must fit in 107 bytes
        token = os.path.join(self.tmp, "token")
        with open(token, "w") as f:
            f.write(secrets.token_hex(32))
        # PATH as with the environment activated: `python` and `ray` of a job's entry point are this interpreter's
        path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        self.base_env = dict(os.environ, PATH=path, RAY_TMPDIR=self.tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token,
                             RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0")
        self.base_env.update(env or {})
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            self.base_env.pop(key, None)
        self.dashboard_port = _free_port() if dashboard else None
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(os.path.join(self.tmp, "helper.log"), "w"),
                                     text=True, env=self.base_env, start_new_session=True)
        try:
            head = self.call({"cmd": "start", "dashboard_port": self.dashboard_port, "object_store_mb": object_store_mb})
        except Exception:
            self.shutdown()
            raise
        self.address, self.head_id = head["address"], head["node_id"]
        self.nodes: dict[str, str] = {}

    def env(self, **extra) -> dict:
        """Environment of a driver joining this cluster (token auth included)."""
        return dict(self.base_env, RAY_ADDRESS=self.address, **extra)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def call(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"cluster helper died: {open(os.path.join(self.tmp, 'helper.log')).read()[-3000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def add(self, name: str, num_cpus: float, resources: dict | None = None) -> str:
        self.nodes[name] = self.call({"cmd": "add", "name": name, "num_cpus": num_cpus, "resources": resources or {}})["node_id"]
        return self.nodes[name]

    def remove(self, name: str) -> None:
        self.call({"cmd": "remove", "name": name})

    def actors(self) -> list[dict]:
        """Every actor of the cluster (alive and dead): class_name, node_id, state (Ray's state API)."""
        return self.call({"cmd": "actors"})["actors"]

    def tasks(self) -> list[dict]:
        return self.call({"cmd": "tasks"})["tasks"]

    def shutdown(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call({"cmd": "shutdown"})
                self.proc.wait(timeout=60)
        except Exception:
            pass
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)  # the helper and the node processes it started (its own session)
            shutil.rmtree(self.tmp, ignore_errors=True)


def _log_tails(lines: int = 12) -> str:
    """The last lines of the newest raylet and agent logs of this cluster's session: why a node did not start."""
    logs = os.path.join(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()), "session_2*", "logs")  # this cluster's
    out = []
    for pattern in ("raylet*.out", "raylet*.err", "dashboard_agent*.log", "runtime_env_agent*.log", "gcs_server*.out"):
        files = sorted(glob.glob(os.path.join(logs, pattern)), key=os.path.getmtime)
        if files:
            with open(files[-1], errors="replace") as f:
                tail = [line for line in f.read().splitlines() if not line.startswith("[state-dump]")][-lines:]
            out.append(f"--- {os.path.basename(files[-1])}\n" + "\n".join(tail))
    return ("\n" + "\n".join(out)) if out else ""


def _add_node(cluster, msg: dict, tries: int = 2):
    """`cluster.add_node`, tried once more with a fresh node where Ray gave up waiting for the first one's raylet to
    register ("The current node timed out during startup", seen on a loaded 2-core machine). What the failed node
    logged goes to the helper's log; its processes are killed, so it cannot join later as an extra node."""
    import psutil

    for attempt in range(tries):
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        try:
            # each node its own runtime-env folder, as on separate machines: in the shared session folder, a
            # node that sets up a job's working_dir replaces the folder the job's driver runs in on the head
            return cluster.add_node(num_cpus=msg["num_cpus"], resources=msg["resources"], runtime_env_dir_name=f"runtime_resources_{msg['name']}",
                                    object_store_memory=cluster.head_node._ray_params.object_store_memory)
        except Exception as exc:
            if attempt + 1 == tries or "timed out during startup" not in str(exc):
                raise
            print(f"adding node {msg['name']} failed, trying again: {exc}{_log_tails()}", file=sys.stderr, flush=True)
            for p in psutil.Process().children(recursive=True):
                if p.pid not in before:
                    p.kill()


def _serve() -> None:  # the helper process
    import ray
    from ray.cluster_utils import Cluster

    cluster, nodes, dash = None, {}, None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "start":
                dash = msg["dashboard_port"]
                # a free port for the head's agent (the job server submits through it): the default 52365 may be
                # taken by another Ray on this machine
                args = dict(num_cpus=0, object_store_memory=msg["object_store_mb"] * 1024**2, dashboard_agent_listen_port=_free_port())
                args |= dict(include_dashboard=True, dashboard_port=dash, dashboard_host="127.0.0.1") if dash else dict(include_dashboard=False)
                cluster = Cluster(initialize_head=True, head_node_args=args)
                reply = {"address": cluster.address, "node_id": cluster.head_node.node_id}
            elif msg["cmd"] == "add":
                nodes[msg["name"]] = node = _add_node(cluster, msg)
                reply = {"node_id": node.node_id}
            elif msg["cmd"] == "remove":
                cluster.remove_node(nodes.pop(msg["name"]), allow_graceful=False)
                reply = {}
            elif msg["cmd"] in ("actors", "tasks"):
                from ray.util import state

                fn = state.list_actors if msg["cmd"] == "actors" else state.list_tasks
                rows = fn(address=f"http://127.0.0.1:{dash}", limit=10000, raise_on_missing_output=False, detail=True)
                keep = ("class_name", "node_id", "state", "name", "pid", "actor_id") if msg["cmd"] == "actors" else ("name", "node_id", "state", "func_or_class_name")
                reply = {msg["cmd"]: [{k: getattr(r, k, None) for k in keep} for r in rows]}
            elif msg["cmd"] == "shutdown":
                cluster.shutdown()
                print(json.dumps({}), flush=True)
                return
            else:
                reply = {"error": f"unknown command {msg['cmd']}"}
        except Exception as exc:  # reported to the test, which fails with it, with what the node's processes logged
            reply = {"error": f"{type(exc).__name__}: {exc}{_log_tails()}"}
        print(json.dumps(reply), flush=True)
    if cluster is not None:
        cluster.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    _serve()
