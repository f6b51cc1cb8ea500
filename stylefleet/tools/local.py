"""A local, loopback-only Ray + Serve for ``stylefleet run``, the tests and the benchmark.

Safe by default:

- Ray rewrites 127.0.0.1 given as a node address to the machine's LAN address, and then binds
  its GCS, raylet, workers and agents to all interfaces. Only its single-machine mode
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) keeps the node on loopback; every Ray process needs
  it, so it goes into the environment the processes inherit.
- Ray's token authentication is on, with a fresh random token per run in a 0600 file that only
  this process tree is told about (Ray's own default token file is world-readable).
- One service per state folder: ``start`` takes an exclusive lock on ``{state_dir}/run.lock`` and
  checks that its fixed ports are free *before* writing anything, so a second start refuses
  (saying which process serves where) and never replaces the live cluster's token file: every
  worker that cluster starts later (autoscaling, a replaced replica) still reads the right token.

Direct ingress (``ingress="direct"``, what ``stylefleet run`` picks for a config with one
application and one router replica): the router replica serves HTTP itself on the config's port,
through Serve's own direct-ingress server, so a request skips the proxy's hop (docs/performance.md
"Direct ingress"); Serve still starts its proxy, on a free loopback port (``proxy_port``), which
serves every application, including any deployed later.

Supervised (``watch``): the raylet and the GCS are polled about once a second; when one dies the
router is told at once (it answers 503) and every process of the Ray session is stopped by pid,
the token and the down file removed (``stylefleet.tools.supervise``, docs/operations.md "When a
Ray process dies").

What still listens beyond loopback (Serve's replica-to-replica gRPC port, hard-coded to ``[::]``
in Ray Serve 2.60 and token-protected) is listed in the docs/operations.md ("What listens where"); the
integration tests fail on any other socket.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import psutil

from stylefleet.config import RAY_ENVIRONMENT
from stylefleet.lifecycle import DOWN_FILE_ENV
from stylefleet.tools.supervise import Death, OwnProcesses, Supervisor, stop_processes

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class AlreadyRunning(RuntimeError):
    """A service already runs from this state folder, or holds a port this one needs."""


def port_taken(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def claim_state_dir(directory: Path, describe: dict[str, Any]) -> int:
    """Lock ``{directory}/run.lock`` for the life of this process (the kernel drops the lock when
    it exits, however it exits) and record who holds it; an open file descriptor is returned.

    Raises ``AlreadyRunning`` naming the holder when another live process has it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, stat.S_IRWXU)
    path = directory / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "{}"
        os.close(fd)
        raise AlreadyRunning(
            f"a stylefleet service is already running from {directory} ({holder}); stop it first "
            "(Ctrl-C in its terminal, or kill its pid), or use another --state-dir and other ports"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), **describe}).encode())
    return fd


def write_private_token(directory: Path) -> Path:
    """A new random token in a file only the owner can read."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, stat.S_IRWXU)
    path = directory / "ray-auth-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def apply_ray_environment(environ: MutableMapping[str, str]) -> None:
    """The service's Ray environment (``stylefleet.config.RAY_ENVIRONMENT``), each variable
    unless the caller set it already (an operator's own value wins)."""
    for name, value in RAY_ENVIRONMENT.items():
        environ.setdefault(name, value)


def direct_ingress_environment(port: int, ports: int = 1) -> dict[str, str]:
    """Serve's direct-ingress variables: the ingress replicas take their HTTP ports from
    ``[port, port + ports)`` (the first one ``port``), and nothing sits in front that needs a
    replica held open or a freed port held back (both exist for external load balancers and
    HAProxy), so a restarted router takes its port back at once."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + ports),
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
    }


def choose_ingress(requested: str, blocker: str | None) -> str:
    """``--ingress`` as asked (``auto``, ``direct`` or ``proxy``) for a config that direct ingress
    cannot serve because of ``blocker`` (None: it can): ``auto`` is direct unless blocked, and
    ``direct`` when blocked is a ValueError that says why."""
    if requested == "direct" and blocker:
        raise ValueError(f"--ingress direct: {blocker}; use --ingress proxy")
    return "direct" if requested == "direct" or (requested == "auto" and not blocker) else "proxy"


def loopback_token_environment(state_dir: Path) -> Path:
    """Set this process's environment so the Ray nodes it starts (one, or a head and workers on
    this machine) stay on 127.0.0.1 and share one fresh private token; its path is returned."""
    from ray._private import ray_constants
    from ray._raylet import Config  # type: ignore[attr-defined]  # compiled module, no stub

    # Single-machine mode: the node address stays 127.0.0.1. Children read the variable at
    # import; this process already imported Ray, so its constant is set too.
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    token_path = write_private_token(state_dir)
    # Read by ray.init and inherited by every Ray process it starts (and only by them).
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    apply_ray_environment(os.environ)
    # Ray reads RAY_AUTH_MODE into its config when first imported; re-read it, as
    # ray._private.authentication does itself when it turns token mode on.
    Config.initialize("")
    return token_path


GIB = 1024**3


def node_memory_bytes(total_bytes: int | None = None) -> int:
    """Ray's ``memory`` resource for the one node ``stylefleet run`` starts: the machine's memory
    less a reserve (a sixth, at least 4 GiB) for what holds no budget: the GCS, the raylet, Serve's
    controller and proxy, the router and the objects in the store.

    Not Ray's default, 70% of the memory *available* when it starts: on a machine where other
    programs hold memory for a while, that leaves the shipped replicas' budgets (13.5 GiB in all)
    unplaced, and the deployments wait for ever. The replicas' budgets are what keeps them inside
    memory; this only has to let them be placed."""
    total = total_bytes if total_bytes is not None else int(psutil.virtual_memory().total)
    return max(total - max(4 * GIB, total // 6), total // 2)


class LocalCluster:
    """Starts (and stops) the Ray it started; never touches any other Ray on the machine."""

    def __init__(
        self,
        *,
        num_cpus: int | None = None,
        metrics_export_port: int | None = None,
        include_dashboard: bool = False,
        dashboard_port: int = 8265,
        temp_dir: str | None = None,
        state_dir: Path | None = None,
        log_to_driver: bool = True,
        http_port: int | None = None,
        ingress: str = "proxy",
        ingress_ports: int = 1,
        memory_bytes: int | None = None,
    ) -> None:
        """``ingress``: ``"proxy"`` (Serve's proxy on ``http_port``) or ``"direct"`` (the router
        replica on ``http_port``, the proxy on a free loopback port; ``ingress_ports`` ports from
        ``http_port`` on for the applications' ingress replicas, one per application)."""
        if ingress not in ("proxy", "direct"):
            raise ValueError(f"ingress must be 'proxy' or 'direct', not {ingress!r}")
        if ingress == "direct" and http_port is None:
            raise ValueError("direct ingress needs the HTTP port the router replica listens on")
        self.ingress = ingress
        self.ingress_ports = ingress_ports
        self.proxy_port: int | None = None  # where Serve's proxy listens, once started
        self._saved_environment: dict[str, str | None] = {}
        self.log_to_driver = log_to_driver
        self.num_cpus = num_cpus
        # Ray's logical `memory` resource (the replicas' memory_budget_bytes are placed against it);
        # None: node_memory_bytes(), the machine's memory less a reserve for Ray's own processes.
        self.memory_bytes = memory_bytes if memory_bytes is not None else node_memory_bytes()
        self.metrics_export_port = metrics_export_port
        self.include_dashboard = include_dashboard
        self.dashboard_port = dashboard_port
        self.temp_dir = temp_dir
        # A state folder of its own when none is given: removed again when the cluster stops.
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="stylefleet-"))
        self.token_path: Path | None = None
        self.http_port = http_port
        self._lock_fd: int | None = None
        self.down_file = self.state_dir / "down"
        self.supervisor: Supervisor | None = None

    def fixed_ports(self) -> dict[str, int]:
        """The ports this cluster will bind by number (the others are chosen free by Ray)."""
        ports = {}
        if self.http_port is not None:
            ports["HTTP"] = self.http_port
        if self.include_dashboard:
            ports["dashboard"] = self.dashboard_port
        if self.metrics_export_port is not None:
            ports["metrics"] = self.metrics_export_port
        return ports

    def _claim(self) -> None:
        """Refuse to start beside a running service, before anything is written (see module doc)."""
        where = {name: f"{LOOPBACK}:{port}" for name, port in self.fixed_ports().items()}
        self._lock_fd = claim_state_dir(self.state_dir, where)
        taken = [f"{name} {LOOPBACK}:{port}" for name, port in self.fixed_ports().items() if port_taken(port)]
        if taken:
            self._unlock()
            raise AlreadyRunning(
                f"{', '.join(taken)} already in use: is a stylefleet service (or another Ray) already running? "
                "Stop it first, or choose other ports"
            )

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def start(self) -> None:
        import ray

        self._claim()
        self.token_path = loopback_token_environment(self.state_dir)
        self.down_file.unlink(missing_ok=True)  # a run that ended without cleaning up (power loss)
        # Inherited by every Ray process: the router reads it (stylefleet.lifecycle), and it marks
        # the session's processes for stop_dead.
        self._saved_environment[DOWN_FILE_ENV] = os.environ.get(DOWN_FILE_ENV)
        os.environ[DOWN_FILE_ENV] = str(self.down_file)
        if self.ingress == "direct":
            assert self.http_port is not None  # checked in __init__
            self.proxy_port = free_port()
            # Read by Serve's controller and replicas when they import it: the Ray they start
            # inherits this environment. Restored by stop(), for the next cluster in this process.
            for name, value in direct_ingress_environment(self.http_port, self.ingress_ports).items():
                self._saved_environment[name] = os.environ.get(name)
                os.environ[name] = value
        kwargs: dict[str, Any] = {
            # Always a new local instance: without it, ray.init joins whatever `ray start`
            # cluster this machine runs (Ray's current-cluster file), someone else's included.
            "address": "local",
            "include_dashboard": self.include_dashboard,
            "dashboard_host": LOOPBACK,
            "dashboard_port": self.dashboard_port,
            "namespace": "serve",
            "num_cpus": self.num_cpus,
            "configure_logging": True,
            "log_to_driver": self.log_to_driver,
        }
        kwargs["_memory"] = self.memory_bytes
        if self.metrics_export_port is not None:
            kwargs["_metrics_export_port"] = self.metrics_export_port
        if self.temp_dir:
            kwargs["_temp_dir"] = self.temp_dir
        try:
            ray.init(**kwargs)
        except BaseException:
            self.token_path.unlink(missing_ok=True)  # ours: no live cluster was told about it
            self._restore_environment()
            self._unlock()
            raise

    def served_document(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config as Serve is given it: with direct ingress, the proxy's port is the free one
        and the config's own port is the router replica's."""
        if self.ingress != "direct":
            return config
        http = dict(config.get("http_options") or {})
        if int(http.get("port", 8000)) != self.http_port:
            raise ValueError(f"the config's http_options.port ({http.get('port', 8000)}) is not this cluster's ({self.http_port})")
        return {**config, "http_options": {**http, "port": self.proxy_port}}

    def _restore_environment(self) -> None:
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment = {}

    def deploy(
        self, config: dict[str, Any], *, timeout_s: float = 300, wait: bool = True, allow_degraded: bool = False
    ) -> list[str]:
        """Deploy a serve_config.yaml document the way `serve run`/`serve deploy` do, and wait
        (unless ``wait`` is false) until every application is RUNNING.

        ``allow_degraded``: an application whose ingress runs but some model deployment failed
        (a missing model) counts as up; its failures are returned. Serve keeps its other
        deployments serving and the router answers 503 model_unavailable for the failed ones.
        """
        from ray.serve._private import api as serve_private
        from ray.serve.schema import ServeDeploySchema

        schema = ServeDeploySchema.model_validate(self.served_document(config))
        client = serve_private.serve_start(
            http_options=schema.http_options.model_dump(),
            proxy_location=schema.proxy_location,
        )
        client.deploy_apps(schema, _blocking=False)
        if not wait:
            return []
        return self.wait_running(
            [app.name for app in schema.applications], timeout_s=timeout_s, allow_degraded=allow_degraded
        )

    def wait_running(self, app_names: list[str], *, timeout_s: float, allow_degraded: bool = False) -> list[str]:
        from ray import serve

        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            status = serve.status()
            states = {n: status.applications.get(n) for n in app_names}
            failed = {n: s for n, s in states.items() if s is not None and s.status == "DEPLOY_FAILED"}
            if failed and not (allow_degraded and all(_ingress_runs(s) for s in failed.values())):
                raise RuntimeError("; ".join(_failure(n, s) for n, s in failed.items()))
            if all(s is not None and (s.status == "RUNNING" or n in failed) for n, s in states.items()):
                return [_failure(n, s) for n, s in failed.items()]
            last = ", ".join(f"{n}={getattr(s, 'status', 'absent')}" for n, s in states.items())
            time.sleep(0.5)
        raise TimeoutError(f"applications not RUNNING after {timeout_s}s ({last})")

    def ray_processes(self) -> dict[str, int]:
        """The pids of the Ray processes the service cannot live without: the raylet and the GCS
        (both started by this process's ``ray.init``)."""
        from ray._private import ray_constants, worker

        node = worker._global_node
        if node is None:
            raise RuntimeError("Ray is not started")
        names = {ray_constants.PROCESS_TYPE_RAYLET: "raylet", ray_constants.PROCESS_TYPE_GCS_SERVER: "GCS"}
        return {label: node.all_processes[kind][0].process.pid for kind, label in names.items()}

    def watch(self, on_death: Callable[[Death], None]) -> Supervisor:
        """Start polling the raylet and the GCS; ``on_death`` is called from the supervisor's
        thread (it normally calls ``stop_dead`` and ends the process). ``stop`` ends the watch."""
        processes = OwnProcesses(marker=(DOWN_FILE_ENV, str(self.down_file)))
        self.supervisor = Supervisor(self.ray_processes(), processes, on_death)
        self.supervisor.start()
        return self.supervisor

    def stop_dead(self, reason: str, *, drain_s: float = 2.0) -> set[int]:
        """After a Ray process died: tell the router (it answers 503 from now on), give clients
        ``drain_s`` to see it, then stop every process of this Ray session by pid, never through
        Ray (it may be the part that is gone), and remove the token, the down file and the lock.
        The pids that would not die are returned (none, normally)."""
        self.down_file.write_text(reason + "\n", encoding="utf-8")
        time.sleep(drain_s)
        supervisor = self.supervisor
        if supervisor is None:
            raise RuntimeError("stop_dead needs watch() first")
        left = stop_processes(supervisor.recorded | supervisor.processes.session(everywhere=True), supervisor.processes)
        self._forget()
        return left

    def _forget(self) -> None:
        if self.token_path is not None:
            self.token_path.unlink(missing_ok=True)
        self.down_file.unlink(missing_ok=True)
        self._restore_environment()
        self._unlock()
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def stop(self) -> None:
        import ray
        from ray import serve

        if self.supervisor is not None:
            self.supervisor.stop()  # the processes about to end do so on purpose
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self._forget()


def _ingress_runs(status: Any) -> bool:
    router = status.deployments.get("router")
    return router is not None and str(getattr(router.status, "value", router.status)) == "HEALTHY"


def _failure(app_name: str, status: Any) -> str:
    """The app's message plus each failed deployment's own (where the real reason is)."""
    parts = [f"{app_name}: {status.message}"]
    for name, dep in status.deployments.items():
        if str(getattr(dep.status, "value", dep.status)) != "HEALTHY" and dep.message:
            parts.append(f"{name}: {dep.message.strip().splitlines()[-1]}")
    return " | ".join(parts)
