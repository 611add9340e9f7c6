"""Fargate sizes: the valid CPU/memory pairs, and every sized job of the code location uses one."""

import pytest
import yaml

from engagement_dagster.core.deploy_sizes import (
    FARGATE_SIZES,
    fargate_memory_values,
    validate_ecs_run_tags,
    validate_fargate_size,
)
from engagement_dagster.core.settings import PROJECT_ROOT


def test_the_table_is_the_documented_one():
    gib = 1024
    assert FARGATE_SIZES[256] == (512, 1024, 2048)
    assert FARGATE_SIZES[512] == (1024, 2048, 3072, 4096)
    assert FARGATE_SIZES[1024] == tuple(range(2 * gib, 8 * gib + 1, gib))
    assert FARGATE_SIZES[2048] == tuple(range(4 * gib, 16 * gib + 1, gib))
    assert FARGATE_SIZES[4096] == tuple(range(8 * gib, 30 * gib + 1, gib))
    assert FARGATE_SIZES[8192] == tuple(range(16 * gib, 60 * gib + 1, 4 * gib))
    assert FARGATE_SIZES[16384] == tuple(range(32 * gib, 120 * gib + 1, 8 * gib))
    assert len(FARGATE_SIZES[16384]) == 12 and len(FARGATE_SIZES[8192]) == 12


@pytest.mark.parametrize(("cpu", "memory"), [
    ("256", "512"), ("256", "2048"), ("512", "3072"), ("1024", "8192"), ("2048", "4096"), ("4096", "30720"),
    ("4096", "9216"), ("8192", "16384"), ("8192", "61440"), ("16384", "32768"), ("16384", "65536"),
    ("16384", "122880"),
])
def test_valid_pairs_pass(cpu, memory):
    assert validate_fargate_size(cpu, memory) == (int(cpu), int(memory))


@pytest.mark.parametrize(("cpu", "memory"), [
    ("256", "4096"),      # too much for a quarter vCPU
    ("512", "512"),       # too little
    ("1024", "1536"),     # not a 1 GiB step
    ("4096", "31744"),    # above 30 GiB
    ("8192", "18432"),    # 8 vCPU moves in 4 GiB steps
    ("16384", "65000"),   # not a multiple of 8 GiB
    ("16384", "16384"),   # below 32 GiB
    ("16384", "131072"),  # above 120 GiB
])
def test_invalid_pairs_are_refused_naming_the_pair_and_the_valid_values(cpu, memory):
    with pytest.raises(ValueError) as refused:
        validate_fargate_size(cpu, memory)
    message = str(refused.value)
    assert repr(cpu) in message and repr(memory) in message
    assert ", ".join(str(v) for v in FARGATE_SIZES[int(cpu)]) in message


@pytest.mark.parametrize(("cpu", "memory"), [("3000", "8192"), ("32768", "131072"), ("16 vCPU", "64 GB"),
                                             ("16384", "64GB"), ("", "512")])
def test_unknown_cpu_sizes_and_non_numbers_are_refused(cpu, memory):
    with pytest.raises(ValueError, match="Fargate"):
        validate_fargate_size(cpu, memory)


def test_memory_values_for_a_cpu_size():
    assert 65536 in fargate_memory_values("16384")
    assert 61440 not in fargate_memory_values("16384")
    with pytest.raises(ValueError, match="must be one of 256, 512, 1024, 2048, 4096, 8192, 16384"):
        fargate_memory_values(3000)


def test_run_tags_need_both_or_neither():
    assert validate_ecs_run_tags({}) is None
    assert validate_ecs_run_tags({"team": "data"}) is None
    assert validate_ecs_run_tags({"ecs/cpu": "16384", "ecs/memory": "65536"}) == (16384, 65536)
    with pytest.raises(ValueError, match="both ecs/cpu and ecs/memory"):
        validate_ecs_run_tags({"ecs/cpu": "16384"}, owner="job weekly_refresh")
    with pytest.raises(ValueError, match=r"^job scoring: Fargate refuses"):
        validate_ecs_run_tags({"ecs/cpu": "16384", "ecs/memory": "64000"}, owner="job scoring")


def test_every_sized_job_of_the_code_location_has_a_valid_fargate_pair():
    from engagement_dagster.definitions import defs

    jobs = list(defs.resolve_all_job_defs())
    sized = {job.name: validate_ecs_run_tags(job.run_tags, owner=f"job {job.name}") for job in jobs
             if {"ecs/cpu", "ecs/memory"} & set(job.run_tags)}
    # The heavy jobs: 16 vCPU / 64 GB.
    assert sized == {"weekly_refresh": (16384, 65536), "training": (16384, 65536), "scoring": (16384, 65536)}
    # A schedule's run carries the job's tags overlaid with the schedule's own: check the result.
    for name in [schedule.name for schedule in defs.schedules or []]:
        schedule = defs.resolve_schedule_def(name)
        job_tags = defs.resolve_job_def(schedule.job_name).run_tags
        assert validate_ecs_run_tags({**job_tags, **(schedule.tags or {})}, owner=f"schedule {name}") is not None


def test_the_launchers_default_size_is_a_valid_pair():
    """Runs without size tags get run_launcher.config.run_resources (deploy/dagster.yaml)."""
    config = yaml.safe_load((PROJECT_ROOT / "deploy" / "dagster.yaml").read_text())["run_launcher"]["config"]
    resources = config["run_resources"]
    assert validate_fargate_size(resources["cpu"], resources["memory"]) == (4096, 16384)
    assert 21 <= resources["ephemeral_storage"] <= 200  # Fargate's range (GiB)
