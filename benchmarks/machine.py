"""What every benchmark records beside its figures: CPU, ISA flags, cores, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from hamnet.core.hardware import HardwareProfile, cpu_flags, resolved_threads

BENCHMARK_LIBRARIES = (
    "torch", "onnx", "onnxruntime", "openvino", "nncf", "olive-ai", "neural-compressor-pt",
    "torchao", "prefect", "mlflow", "numpy",
)  # fmt: skip
"""Library versions recorded with every benchmark."""


def machine_info(profile: HardwareProfile | None = None) -> dict[str, Any]:
    """CPU model, ISA flags (AVX2/AVX-512/VNNI/AMX), cores, threads and library versions:
    what every benchmark records beside its figures.

    Args:
        profile: The hardware profile in use; adds its name, threads and batch sizes.

    Returns:
        A JSON-serialisable dict.
    """
    from importlib import metadata

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wanted = (
        "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
        "amx_int8", "amx_bf16",
    )  # fmt: skip
    versions: dict[str, str | None] = {}
    for lib in BENCHMARK_LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    info: dict[str, Any] = {
        "cpu": model or platform.processor(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "flags": sorted(f for f in wanted if f in cpu_flags()),
        "python": platform.python_version(),
        "versions": versions,
    }
    if profile is not None:
        info["profile"] = profile.name
        info["threads"] = resolved_threads(profile)
        info["latency_batch_size"] = profile.latency_batch_size
        info["throughput_batch_size"] = profile.throughput_batch_size
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info
