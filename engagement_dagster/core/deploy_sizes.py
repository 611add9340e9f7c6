"""Fargate task sizes: the CPU/memory pairs AWS accepts, checked before a run is ever launched.

The EcsRunLauncher passes a run's `ecs/cpu` and `ecs/memory` tags (CPU units and MiB, as strings)
straight to ECS RunTask. An invalid pair is only refused by AWS when the run starts (and moto does not
refuse it at all), so the code location checks its own tags with `validate_fargate_size`.

Plain Python, no Dagster import: the deployment tests and definitions.py both use it.
"""

from __future__ import annotations

from collections.abc import Mapping


def _steps(first: int, last: int, step: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1, step))


# Task CPU units → the task memory values (MiB) Fargate accepts with it (Linux tasks), from the
# "Task CPU and memory" table of the Amazon ECS developer guide.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: _steps(1024, 4096, 1024),
    1024: _steps(2048, 8192, 1024),
    2048: _steps(4096, 16384, 1024),
    4096: _steps(8192, 30720, 1024),
    8192: _steps(16384, 61440, 4096),
    16384: _steps(32768, 122880, 8192),
}

CPU_TAG = "ecs/cpu"
MEMORY_TAG = "ecs/memory"


def _units(value: str, what: str) -> int:
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"Fargate {what} must be a whole number as a string (CPU units / MiB), got {value!r}")
    return int(text)


def fargate_memory_values(cpu: str | int) -> tuple[int, ...]:
    """The memory values (MiB) Fargate accepts with `cpu` CPU units; ValueError if `cpu` is not a Fargate size."""
    units = _units(str(cpu), "cpu")
    if units not in FARGATE_SIZES:
        sizes = ", ".join(str(size) for size in FARGATE_SIZES)
        raise ValueError(f"Fargate has no task size with cpu {units!r}: cpu must be one of {sizes} (CPU units)")
    return FARGATE_SIZES[units]


def validate_fargate_size(cpu: str, memory: str) -> tuple[int, int]:
    """Refuse a CPU/memory pair Fargate would refuse at RunTask time; returns the pair as integers.

    The ValueError names the pair and lists the memory values valid for that CPU size.
    """
    units = _units(cpu, "cpu")
    mib = _units(memory, "memory")
    valid = fargate_memory_values(units)
    if mib not in valid:
        raise ValueError(
            f"Fargate refuses cpu={cpu!r} with memory={memory!r}: with {units} CPU units memory must be one of "
            + ", ".join(str(value) for value in valid) + " (MiB)"
        )
    return units, mib


def validate_ecs_run_tags(tags: Mapping[str, str] | None, owner: str = "run") -> tuple[int, int] | None:
    """Check the `ecs/cpu` / `ecs/memory` run tags of a job (or schedule, sensor): both or neither.

    A job with only one of the two would take the other from whatever task definition the launcher
    copies, so the pair would not be checked: that is refused too. Returns the pair, or None when the
    job carries no size (the launcher's default `run_resources` then apply).
    """
    tags = tags or {}
    cpu, memory = tags.get(CPU_TAG), tags.get(MEMORY_TAG)
    if cpu is None and memory is None:
        return None
    if cpu is None or memory is None:
        raise ValueError(f"{owner}: set both {CPU_TAG} and {MEMORY_TAG} run tags or neither (got {dict(tags)!r})")
    try:
        return validate_fargate_size(cpu, memory)
    except ValueError as error:
        raise ValueError(f"{owner}: {error}") from None
