"""Session options only the benchmark varies, kept out of the product's ``RuntimeOptions``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import onnxruntime as ort

from stylefleet.deployments.onnx_session import RuntimeOptions


@dataclass(frozen=True)
class BenchRuntime(RuntimeOptions):
    """``RuntimeOptions`` plus what ``stylefleet bench sessions`` and ``bare`` compare the shipped
    options against: ``spinning`` (idle pool threads spin-wait for work), ``arena`` (ONNX
    Runtime's CPU memory arena; off cost 2.4x on multistyle26) and ``env_allocators`` (use a
    process-wide allocator registered beforehand). The defaults are what the product runs."""

    spinning: bool = False
    arena: bool = True
    env_allocators: bool = False

    @classmethod
    def of(cls, runtime: RuntimeOptions, **changes: Any) -> BenchRuntime:
        """``runtime`` (e.g. what the loader gives a deployment) with the benchmark's ``changes``."""
        return cls(**{f.name: getattr(runtime, f.name) for f in fields(RuntimeOptions)}, **changes)

    def tune(self, opts: ort.SessionOptions) -> None:
        opts.enable_cpu_mem_arena = self.arena
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.env_allocators:
            opts.add_session_config_entry("session.use_env_allocators", "1")
