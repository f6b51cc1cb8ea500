"""ONNX Runtime sessions sized for serving: true batches, the memory arena on, threads = cores.

Session options were chosen by measurement (docs/performance.md "Performance", ``stylefleet bench
sessions``, ``stylefleet/bench/arena.py``): the CPU memory arena stays on (turning it off cost
2.4x on multistyle26), memory patterns are on or off per network as measured (the kind's
``memory_patterns``), and idle pool threads sleep instead of spinning, so replicas of several
models can share the cores. Memory is bounded by the replica's pixel budget per batch instead
(``stylefleet.deployments.queue``): the arena grows to the largest batch the budget lets through and stays
there. A call over the budget (one image larger than the whole budget, run alone) runs inside
``releasing_arena()``, which hands the arena's free chunks back when the call ends.

Each network has one session per call the replica runs at once (``RuntimeOptions.calls``), and
a call takes a free one: no two calls share an arena. Two calls in one arena interleave their
allocations differently every time they overlap, so now and then a call lands on pages of the
arena that no call had touched yet, and the replica's RSS took a step of 200-290 MiB minutes into
a steady load (docs/performance.md "Memory flat by design"). One call at a time finds its arena
all free, and the same batch shape then takes the same chunks every time. ``warm`` runs each
batch size a replica will form twice on every session at start, so those pages are touched
before the first request rather than minutes into a load.

The shipped ONNX files have batch size 1 baked into their inputs, outputs and some Reshape
targets. ``with_symbolic_batch`` rewrites dim 0 to a symbolic name and the leading ``1`` of
constant Reshape targets to ``-1``, so one call runs N images. Checked for all four networks:
a batch of N gives bitwise the same outputs as N single calls (tests/unit/test_models.py).
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from stylefleet.config import Device
from stylefleet.deployments.memory import arena_release_requested


@dataclass(frozen=True)
class RuntimeOptions:
    """How a replica runs its networks.

    ``threads``: ONNX Runtime intra-op threads (``None``: every core this process may use).
    ``mem_pattern``: ONNX Runtime's per-shape memory plans (the CPU arena is always on).
    ``lone_call_threads``: threads of a second session of the same network, used for a call
    that runs while its replica is otherwise idle (``running_alone()``); ``None``: no second
    session. A lone request then gets every core the replica was sized for, where ``threads``
    alone would leave the others idle (docs/performance.md "A lone request on every core").
    ``calls``: sessions per network, one for each call the replica runs at once (``model_calls``),
    so that no two calls share an arena (module docstring). ``fp16``: the network's weights and
    arithmetic in fp16, its inputs and outputs still fp32 (``to_fp16``).
    """

    device: Device = "cpu"
    threads: int | None = 1
    gpu_mem_limit_bytes: int | None = None
    gpu_device_id: int = 0
    mem_pattern: bool = True
    lone_call_threads: int | None = None
    calls: int = 1
    fp16: bool = False  # convert the network to fp16 at load (``to_fp16``; precision: fp16, CUDA only)

    @property
    def intra_op_threads(self) -> int:
        return self.threads if self.threads else available_cores()

    def tune(self, opts: ort.SessionOptions) -> None:
        """The last say on a session's options: idle pool threads sleep instead of spin-waiting, so
        replicas of several models share the cores. The benchmark's variants override it
        (``stylefleet.bench.runtime.BenchRuntime``); the product sets nothing else here."""
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)




def with_symbolic_batch(path: Path) -> bytes:
    """Return the model serialised with a symbolic batch dimension."""
    model = onnx.load(str(path))
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in initializers:
            continue
        target = numpy_helper.to_array(initializers[node.input[1]])
        if target.ndim == 1 and target.size > 1 and target[0] == 1 and -1 not in target:
            batched = target.copy()
            batched[0] = -1
            name = f"{node.input[1]}__stylefleet_batch"
            if name not in initializers:
                initializers[name] = numpy_helper.from_array(batched, name)
                graph.initializer.append(initializers[name])
            node.input[1] = name
    # Shapes inferred for batch 1 would contradict the new symbolic dimension.
    del graph.value_info[:]
    return model.SerializeToString()


def make_session(model_bytes: bytes, options: RuntimeOptions) -> ort.InferenceSession:
    """An InferenceSession with the measured-fastest options (module docstring).

    The CPU arena keeps the peak of the largest call; the pixel budget bounds that call. On CUDA
    the arena grows only as requested and is capped at ``gpu_mem_limit_bytes``.
    """
    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = options.mem_pattern
    opts.intra_op_num_threads = options.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    options.tune(opts)
    providers: list[str | tuple[str, dict[str, object]]] = ["CPUExecutionProvider"]
    if options.device == "cuda":
        cuda: dict[str, object] = {
            "device_id": options.gpu_device_id,
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
        if options.gpu_mem_limit_bytes:
            cuda["gpu_mem_limit"] = int(options.gpu_mem_limit_bytes)
        providers.insert(0, ("CUDAExecutionProvider", cuda))
    session = ort.InferenceSession(model_bytes, opts, providers=providers)
    if options.device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        # onnxruntime silently falls back to CPU when the CUDA libraries fail to load.
        raise RuntimeError(
            "device 'cuda' asked for but onnxruntime could not start CUDAExecutionProvider "
            f"(available: {ort.get_available_providers()}); install onnxruntime-gpu with CUDA 12 and cuDNN 9"
        )
    return session


@dataclass(frozen=True)
class Network:
    """One ONNX network as a model runs it: ``sessions``, one per call that may run at once, each
    taken by one call at a time; ``lone`` (when the options ask for it) for a call that runs
    alone on ``lone_call_threads``.

    All are built from the same bytes with the same options but the thread count; ONNX
    Runtime's CPU kernels split work by output, so all give the same bytes (checked for the
    four shipped networks in tests/unit/test_lone_calls.py and test_session_pool.py).
    """

    sessions: tuple[ort.InferenceSession, ...]
    lone: ort.InferenceSession | None = None
    _free: queue.SimpleQueue[ort.InferenceSession] = field(init=False, repr=False, compare=False)
    _lone_lock: threading.Lock = field(init=False, repr=False, compare=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.sessions:
            raise ValueError("a network needs at least one session")
        free: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in self.sessions:
            free.put(session)
        object.__setattr__(self, "_free", free)

    def get_inputs(self) -> list[ort.NodeArg]:
        return list(self.sessions[0].get_inputs())

    @contextmanager
    def session(self) -> Iterator[ort.InferenceSession]:
        """A session no other call is using (waits for one when every session is busy), or the
        lone-call session inside ``running_alone()`` when it is free."""
        if self.lone is not None and _alone.get() and self._lone_lock.acquire(blocking=False):
            try:
                yield self.lone
            finally:
                self._lone_lock.release()
            return
        session = self._free.get()
        try:
            yield session
        finally:
            self._free.put(session)


def to_fp16(model_bytes: bytes) -> bytes:
    """The network with fp16 weights and arithmetic; its inputs and outputs stay fp32, so the
    model's pre- and post-processing do not change (ONNX Runtime's own converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
    return bytes(converted.SerializeToString())


def make_network(model_bytes: bytes, options: RuntimeOptions) -> Network:
    """``options.calls`` sessions (``make_session``), plus the lone-call session where
    ``options.lone_call_threads`` exceeds the call's own threads (CPU only: a GPU runs one
    queue whatever the threads). ``options.fp16``: converted first (``to_fp16``)."""
    if options.fp16:
        model_bytes = to_fp16(model_bytes)
    sessions = tuple(make_session(model_bytes, options) for _ in range(max(1, options.calls)))
    lone_threads = options.lone_call_threads
    if options.device != "cpu" or lone_threads is None or lone_threads <= options.intra_op_threads:
        return Network(sessions)
    return Network(sessions, make_session(model_bytes, replace(options, threads=lone_threads)))


# Set by the replica around a batch that starts while nothing else runs or waits (serving.py):
# ``run`` then uses the network's lone-call session. A context variable: only the thread
# running that batch sees it.
_alone: contextvars.ContextVar[bool] = contextvars.ContextVar("stylefleet_running_alone", default=False)


@contextmanager
def running_alone(alone: bool = True) -> Iterator[None]:
    """Within this block (when ``alone``), network calls use their lone-call session if they have one."""
    token = _alone.set(alone)
    try:
        yield
    finally:
        _alone.reset(token)


def input_names(network: Network) -> list[str]:
    return [i.name for i in network.get_inputs()]


def run(network: Network, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One call through ``network`` on a session of its own (``Network.session``), honouring
    ``releasing_arena()``."""
    with network.session() as session:
        return _run(session, feeds)


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    if not arena_release_requested():
        return session.run(None, feeds)
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return session.run(None, feeds, options)


WARM_PASSES = 2  # a shape's first call plans its memory; the second runs the plan (module docstring)


def warm(network: Network, feeds_of: Callable[[int], dict[str, np.ndarray]], batch_sizes: Sequence[int]) -> None:
    """Run each of ``batch_sizes`` (largest first) ``WARM_PASSES`` times on every session, the
    sessions at once on a thread each, then one image on the lone-call session as often: the
    pages those calls need are touched before any request. Takes every session for its
    duration, so no call shares one meanwhile (a call arriving then waits for a session)."""
    sizes = sorted(set(batch_sizes), reverse=True)

    def on(session: ort.InferenceSession, sizes: Sequence[int]) -> None:
        for _ in range(WARM_PASSES):
            for size in sizes:
                session.run(None, feeds_of(size))

    taken = [network._free.get() for _ in network.sessions]
    try:
        with network._lone_lock:
            with ThreadPoolExecutor(len(taken)) as pool:
                for done in [pool.submit(on, session, sizes) for session in taken]:
                    done.result()
            if network.lone is not None:
                on(network.lone, [1])
    finally:
        for session in taken:
            network._free.put(session)
