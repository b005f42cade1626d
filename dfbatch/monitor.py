"""What the machine is and what our processes use on it (Linux /proc), for benchmark reports: `machine_info`,
`versions`, `load`, and `ResourceMonitor` (peak memory by process role, CPU of the driver's process tree vs the
whole machine, the object store's high-water mark) sampled on a thread while a job runs; `StartupClock`: a job's
start-up as steps on one time line from the process start (recorded in each scoring job's summary)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import threading
import time

import numpy as np

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- the machine
def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch

    from dfbatch.models.inference import cpu_bf16_supported

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    info = {
        "host_id": hashlib.sha1(platform.node().encode()).hexdigest()[:8],  # tells runs on one machine apart
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(mem / 1024**3, 1) if mem else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_bf16_supported(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
    }
    return info


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("dfbatch", "torch", "torchvision", "ray", "av", "decord", "opencv-python-headless", "numpy", "facenet-pytorch", "mlflow", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------------------------- start-up
def process_started_at() -> float:
    """When this process started, in `time.time()` seconds (Linux: /proc, 10 ms resolution; else psutil; else now)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


class StartupClock:
    """A job's start-up as named steps on one time line that starts when the process started: where the fixed
    cost of a job goes (interpreter and imports, model, Ray, actors, first result). Steps may overlap (one runs
    on a thread); `report()` gives each as {"at_s": start, "s": duration} in seconds from the process start."""

    def __init__(self, origin: float | None = None):
        self.origin = process_started_at() if origin is None else origin
        self.created = time.time()
        self.steps: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def record(self, name: str, start: float, end: float | None = None) -> None:
        with self._lock:
            self.steps[name] = (start, time.time() if end is None else end)

    @contextlib.contextmanager
    def step(self, name: str):
        start = time.time()
        try:
            yield
        finally:
            self.record(name, start)

    def report(self) -> dict:
        with self._lock:
            steps = sorted(self.steps.items(), key=lambda kv: kv[1])
        return {"process_started_at": self.origin,
                "steps": {name: {"at_s": round(a - self.origin, 3), "s": round(b - a, 3)} for name, (a, b) in steps}}


# ------------------------------------------------------------------------------------------ our processes
def _proc_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return out


def _role(cmdline: str, pid: int) -> str:
    if pid == os.getpid():
        return "driver"
    if cmdline.startswith("ray::"):  # a worker's process title: ray::IDLE, ray::MapWorker(MapBatches(FaceStage)), ...
        for key, role in (("FaceScoreStage", "face_score_worker"), ("FaceStage", "face_worker"), ("ScoreStage", "score_worker"), ("Write", "write_task")):
            if key in cmdline:
                return role
        return "other_ray_worker"
    exe = os.path.basename(cmdline.split(" ", 1)[0])
    return exe if exe in ("raylet", "gcs_server") else "other"


def _plasma_kb(pid: int) -> int:
    """KB allocated in the object store's shared-memory file(s) held open by `pid` (tmpfs allocates on first
    touch and keeps pages when objects are freed, so this is the store's high-water mark)."""
    total = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if "plasma" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
            except OSError:
                continue
    except OSError:
        pass
    return total // 1024


class ResourceMonitor:
    """Samples (every `interval` s, Linux /proc) peak RSS and private (anonymous) memory of the driver's process
    tree by role and CPU time of that tree vs the whole machine. Object store: pages allocated in the raylet's
    plasma file (its high-water mark). Local node only."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.procs: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._initial = False
        self.timeline: list[tuple[float, float, float]] = []  # (time.time(), our tree's CPU s, machine busy CPU s)

    @staticmethod
    def _busy_jiffies() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals) - idle, sum(vals)

    def _sample(self) -> None:
        for pid in _proc_tree(os.getpid()):
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError):
                continue
            kb = lambda key: int(status.get(key, "0 kB").split()[0])  # noqa: E731
            rec = self.procs.setdefault(pid, {"role": _role(cmd, pid), "hwm_kb": 0, "anon_kb": 0, "shmem_kb": 0, "cpu_s": 0.0, "cpu0_s": None})
            if rec["role"] in ("other", "other_ray_worker"):
                rec["role"] = _role(cmd, pid)  # an actor's title appears once it is constructed
            rec["hwm_kb"] = max(rec["hwm_kb"], kb("VmHWM"))
            rec["anon_kb"] = max(rec["anon_kb"], kb("RssAnon"))
            if rec["role"] == "raylet":
                rec["shmem_kb"] = max(rec["shmem_kb"], _plasma_kb(pid))
            cpu = (int(fields[11]) + int(fields[12])) / self._ticks
            if rec["cpu0_s"] is None:
                rec["cpu0_s"] = cpu if self._initial else 0.0  # a process born during the run counts from 0
            rec["cpu_s"] = cpu
        ours = sum(rec["cpu_s"] - rec["cpu0_s"] for rec in self.procs.values())
        self.timeline.append((time.time(), ours, self._busy_jiffies()[0] / self._ticks))

    def window(self, t0: float, t1: float) -> dict | None:
        """CPU seconds used by the driver's tree and by the whole machine between two wall-clock times."""
        def at(t: float) -> tuple[float, float]:
            ts = [x[0] for x in self.timeline]
            i = min(max(1, int(np.searchsorted(ts, t))), len(ts) - 1)
            (ta, oa, ba), (tb, ob, bb) = self.timeline[i - 1], self.timeline[i]
            w = 0.0 if tb == ta else min(1.0, max(0.0, (t - ta) / (tb - ta)))
            return oa + w * (ob - oa), ba + w * (bb - ba)
        if len(self.timeline) < 2 or t1 <= t0:
            return None
        (o0, b0), (o1, b1) = at(t0), at(t1)
        return {"seconds": t1 - t0, "ours_cpu_s": o1 - o0, "machine_busy_cpu_s": b1 - b0}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as exc:  # never let monitoring break the run
                log.debug("monitor: %s", exc)
            self._stop.wait(self.interval)

    def __enter__(self) -> "ResourceMonitor":
        self._initial = True
        self._sample()
        self._initial = False
        self._t0, (self._busy0, self._total0) = time.perf_counter(), self._busy_jiffies()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()
        busy1, total1 = self._busy_jiffies()
        self.machine_busy_s = (busy1 - self._busy0) / self._ticks
        self.elapsed_s = time.perf_counter() - self._t0

    def report(self) -> dict:
        roles: dict[str, dict] = {}
        ours = 0.0
        for rec in self.procs.values():
            ours += rec["cpu_s"] - (rec["cpu0_s"] or 0.0)
            r = roles.setdefault(rec["role"], {"processes": 0, "peak_rss_mb": 0.0, "peak_private_mb": 0.0, "cpu_s": 0.0})
            r["processes"] += 1
            r["cpu_s"] = round(r["cpu_s"] + rec["cpu_s"] - (rec["cpu0_s"] or 0.0), 1)
            r["peak_rss_mb"] = round(max(r["peak_rss_mb"], rec["hwm_kb"] / 1024), 1)
            r["peak_private_mb"] = round(max(r["peak_private_mb"], rec["anon_kb"] / 1024), 1)
        n_cpu = os.cpu_count() or 1
        capacity = n_cpu * self.elapsed_s
        plasma = [rec["shmem_kb"] for rec in self.procs.values() if rec["role"] == "raylet"]
        return {
            "per_role": roles,
            "object_store_peak_mb": round(max(plasma) / 1024, 1) if plasma else None,
            "cpu": {
                "ours_cpu_s": round(ours, 1),
                "machine_busy_cpu_s": round(self.machine_busy_s, 1),
                "others_share": round(max(0.0, self.machine_busy_s - ours) / capacity, 3) if capacity else None,
                "utilisation": round(self.machine_busy_s / capacity, 3) if capacity else None,
            },
        }


__all__ = ["ResourceMonitor", "StartupClock", "load", "machine_info", "process_started_at", "versions"]
