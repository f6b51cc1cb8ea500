"""The benchmark's session variants live in the bench package; the product's options hold what it runs."""

from __future__ import annotations

from dataclasses import fields

import onnxruntime as ort

from stylefleet.bench.runtime import BenchRuntime
from stylefleet.deployments.onnx_session import RuntimeOptions

SPINNING = "session.intra_op.allow_spinning"


def test_the_products_runtime_options_hold_no_benchmark_only_fields() -> None:
    assert not {"spinning", "arena", "env_allocators"} & {f.name for f in fields(RuntimeOptions)}


def test_the_product_never_lets_idle_threads_spin() -> None:
    opts = ort.SessionOptions()
    RuntimeOptions().tune(opts)
    assert opts.get_session_config_entry(SPINNING) == "0"


def test_a_bench_variant_keeps_the_deployments_options_and_sets_its_own() -> None:
    base = RuntimeOptions(threads=1, calls=3, lone_call_threads=3, mem_pattern=False)
    variant = BenchRuntime.of(base, spinning=True, arena=False, env_allocators=True)
    assert (variant.threads, variant.calls, variant.lone_call_threads, variant.mem_pattern) == (1, 3, 3, False)
    opts = ort.SessionOptions()
    variant.tune(opts)
    assert opts.get_session_config_entry(SPINNING) == "1"
    assert opts.get_session_config_entry("session.use_env_allocators") == "1"
    assert opts.enable_cpu_mem_arena is False
    shipped = ort.SessionOptions()
    BenchRuntime.of(base).tune(shipped)
    assert shipped.get_session_config_entry(SPINNING) == "0" and shipped.enable_cpu_mem_arena is True
