"""The Terraform in deploy/terraform: parsed, scanned by checkov, and its key promises asserted.

No terraform (or OpenTofu) binary or provider can be downloaded on these machines, so this is
not `terraform validate`: every .tf file is parsed with python-hcl2, the whole tree is scanned
by checkov (zero failed checks; every skip is an inline `#checkov:skip=ID:reason` that is
really needed), and the facts other parts of the project rely on are read from the parsed HCL:
the 16 vCPU / 64 GB run family, private services, encrypted private database, blocked and
TLS-only buckets, IAM without Resource "*" except where AWS requires it.

checkov pins an old boto3, so it gets its own virtual environment, created once under
.venv-checkov/ at the repository root (ignored by git) and reused by later sessions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TF_DIR = ROOT / "deploy" / "terraform"
MODULES_DIR = TF_DIR / "modules"
TF_FILES = sorted(TF_DIR.rglob("*.tf"))

CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = ROOT / ".venv-checkov"
CHECKOV_STAMP = CHECKOV_VENV / f".installed-checkov-{CHECKOV_VERSION}"

EXPECTED_MODULES = {"kms", "storage", "catalog", "database", "compute", "orchestration", "knowledge_base",
                    "prediction_api"}
# Modules the root instantiates with `count` (checkov names their resources module.<name>[0].…).
COUNTED_MODULES = {"knowledge_base", "prediction_api"}

# Environment every Dagster container needs (engagement_dagster/core/settings.py, deploy/dagster.yaml).
REQUIRED_ENV = {
    "ENGAGEMENT_ENV",
    "ENGAGEMENT_LAKE_BUCKET",
    "ENGAGEMENT_LAKE_PREFIX",
    "ENGAGEMENT_GLUE_RAW_DATABASE",
    "ENGAGEMENT_GLUE_DATABASE",
    "ENGAGEMENT_ATHENA_WORKGROUP",
    "ENGAGEMENT_ATHENA_STAGING",
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_DB",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_CURRENT_IMAGE",
    "DAGSTER_COMPUTE_LOG_BUCKET",
    "DAGSTER_COMPUTE_LOG_PREFIX",
}

SKIP_COMMENT = re.compile(r"#checkov:skip=(CKV2?_AWS_\d+):(.*)$")


# ------------------------------------------------------------------------------------------------
# Reading the HCL
# ------------------------------------------------------------------------------------------------


def unquote(value):
    """python-hcl2 keeps string literals quoted ('"aws"'); expressions stay '${...}'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


_PARSED: dict[Path, dict] = {}


def parsed(path: Path) -> dict:
    if path not in _PARSED:
        with path.open() as handle:
            _PARSED[path] = hcl2.load(handle)
    return _PARSED[path]


def blocks(kind: str, directory: Path = TF_DIR):
    """(path, type, name, body) of every `resource` or `data` block under directory."""
    for path in TF_FILES:
        if directory not in path.parents:
            continue
        for block in parsed(path).get(kind, []):
            for block_type, named in block.items():
                for name, body in named.items():
                    yield path, unquote(block_type), unquote(name), body


def one(kind: str, block_type: str, name: str, directory: Path = TF_DIR) -> dict:
    found = [body for _, t, n, body in blocks(kind, directory) if (t, n) == (block_type, name)]
    assert len(found) == 1, f"expected one {kind} {block_type}.{name}, found {len(found)}"
    return found[0]


def of_type(block_type: str, directory: Path = TF_DIR, kind: str = "resource") -> dict[str, dict]:
    return {n: body for _, t, n, body in blocks(kind, directory) if t == block_type}


def variables(directory: Path) -> dict[str, dict]:
    out = {}
    for path in directory.glob("*.tf"):
        for block in parsed(path).get("variable", []):
            for name, body in block.items():
                out[unquote(name)] = body
    return out


def module_locals(directory: Path) -> dict:
    out = {}
    for path in directory.glob("*.tf"):
        for block in parsed(path).get("locals", []):
            out.update(block)
    return out


def module_calls() -> dict[str, dict]:
    """Module blocks of the root module, by name."""
    out = {}
    for path in TF_DIR.glob("*.tf"):
        for block in parsed(path).get("module", []):
            out.update({unquote(name): body for name, body in block.items()})
    return out


def root_default(name: str):
    return unquote(variables(TF_DIR)[name]["default"])


def hcl_string_literals(text: str) -> list[str]:
    """The double-quoted HCL string literals in text, with HCL escapes resolved."""
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    return [re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s) for s in literals]


# ------------------------------------------------------------------------------------------------
# checkov in its own virtual environment
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def checkov_python() -> Path:
    """.venv-checkov/bin/python with checkov installed; created on first use, then reused."""
    python = CHECKOV_VENV / "bin" / "python"
    if not CHECKOV_STAMP.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(CHECKOV_VENV)], check=True, timeout=300)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"checkov=={CHECKOV_VERSION}"],
            check=False, capture_output=True, text=True, timeout=900,
        )
        assert install.returncode == 0, f"pip install checkov=={CHECKOV_VERSION} failed:\n{install.stderr[-3000:]}"
        CHECKOV_STAMP.touch()
    return python


def run_checkov(checkov_python: Path, directory: Path) -> dict:
    """The brief's command, plus --skip-download: no call to Prisma Cloud (none can be made here)."""
    result = subprocess.run(
        [str(checkov_python.parent / "checkov"), "-d", str(directory), "--framework", "terraform",
         "--compact", "--quiet", "-o", "json", "--skip-download"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), f"checkov printed nothing (rc {result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one report per framework
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    return report


@pytest.fixture(scope="session")
def checkov_report(checkov_python) -> dict:
    return run_checkov(checkov_python, TF_DIR.relative_to(ROOT))


def skip_comments() -> list[tuple[str, str, str]]:
    """(checkov resource address, check id, reason) of every inline skip in the tree."""
    out = []
    for path in TF_FILES:
        rel = path.relative_to(TF_DIR)
        prefix = ""
        if rel.parts[0] == "modules":
            prefix = f"module.{rel.parts[1]}[0]." if rel.parts[1] in COUNTED_MODULES else f"module.{rel.parts[1]}."
        block = None
        for line in path.read_text().splitlines():
            header = re.match(r'\s*(resource|data)\s+"([^"]+)"\s+"([^"]+)"\s*\{', line)
            if header:
                block = header.groups()
            match = SKIP_COMMENT.search(line)
            if match:
                assert block, f"{rel}: skip comment outside a resource or data block: {line.strip()}"
                _, block_type, name = block
                address = f"{prefix}{block_type}.{name}"
                out.append((address, match.group(1), match.group(2).strip()))
    return out


# ------------------------------------------------------------------------------------------------
# (1) Every file parses
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", TF_FILES, ids=[str(p.relative_to(TF_DIR)) for p in TF_FILES])
def test_every_tf_file_parses(path):
    assert isinstance(parsed(path), dict)


def test_root_composes_the_modules_with_aws_provider_6_27():
    modules = {name: unquote(body["source"]) for name, body in module_calls().items()}
    assert set(modules) == EXPECTED_MODULES
    for name, source in modules.items():
        # checkov names module resources by call name; skip_comments() relies on dir == name.
        assert source == f"./modules/{name}"
        assert (TF_DIR / source).is_dir()
    assert {name for name, body in module_calls().items() if "count" in body} == COUNTED_MODULES

    for directory in [TF_DIR, *(MODULES_DIR / m for m in EXPECTED_MODULES)]:
        terraform = parsed(directory / "versions.tf")["terraform"][0]
        aws = terraform["required_providers"][0]["aws"]
        assert unquote(aws["source"]) == "hashicorp/aws"
        assert ">= 6.27" in unquote(aws["version"]), directory


def _code(directory: Path) -> str:
    """The module's .tf text without comments."""
    text = "\n".join(path.read_text() for path in sorted(directory.glob("*.tf")))
    return re.sub(r"(^|\s)(#|//).*$", "", text, flags=re.M)


def _declared(directory: Path, kind: str) -> set[str]:
    return {unquote(name) for path in directory.glob("*.tf") for block in parsed(path).get(kind, []) for name in block}


@pytest.mark.parametrize("directory", [TF_DIR, *(MODULES_DIR / m for m in sorted(EXPECTED_MODULES))],
                         ids=["root", *sorted(EXPECTED_MODULES)])
def test_references_resolve_within_each_module(directory):
    """What `terraform validate` would catch first: every var., local., resource, data source and
    module output referenced is declared, and each module call passes exactly known variables."""
    code = _code(directory)
    assert set(re.findall(r"\bvar\.(\w+)", code)) <= set(variables(directory))
    assert set(re.findall(r"\blocal\.(\w+)", code)) <= set(module_locals(directory))
    resources = {(t, n) for p, t, n, _ in blocks("resource") if p.parent == directory}
    data = {(t, n) for p, t, n, _ in blocks("data") if p.parent == directory}
    referenced = set(re.findall(r"(?<![\w.])(aws_\w+)\.(\w+)\.\w+", code))
    assert referenced <= resources, referenced - resources
    assert set(re.findall(r"\bdata\.(aws_\w+)\.(\w+)", code)) <= data
    for name, call in (module_calls().items() if directory == TF_DIR else []):
        child = MODULES_DIR / name
        declared = variables(child)
        arguments = {k for k in call
                     if k not in {"source", "count", "__is_block__", "__comments__", "__inline_comments__"}}
        assert arguments <= set(declared), (name, arguments - set(declared))
        required = {v for v, body in declared.items() if "default" not in body}
        assert required <= arguments, (name, required - arguments)
        outputs = _declared(child, "output")
        used = set(re.findall(rf"\bmodule\.{name}(?:\[\d+\])?\.(\w+)", code))
        assert used <= outputs, (name, used - outputs)


# ------------------------------------------------------------------------------------------------
# (2) checkov
# ------------------------------------------------------------------------------------------------


def test_checkov_reports_no_failed_checks(checkov_report):
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']})"
              for c in checkov_report["results"].get("failed_checks", [])]
    summary = checkov_report["summary"]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0
    assert summary["passed"] > 250, summary  # the tree was really scanned
    # Each module is instantiated once, so each inline skip is exactly one skipped result.
    assert summary["skipped"] == len(skip_comments()), summary


def test_every_skip_has_a_reason_and_is_needed(checkov_python, tmp_path):
    skips = skip_comments()
    for address, check_id, reason in skips:
        assert len(reason) >= 20, f"{address} {check_id}: give a one-line reason"
    # Without the skip comments, exactly the skipped checks fail: no skip is stale or decorative.
    bare = tmp_path / "terraform"
    shutil.copytree(TF_DIR, bare)
    for path in bare.rglob("*.tf"):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if not SKIP_COMMENT.search(line)))
    report = run_checkov(checkov_python, bare)
    failing = {(c["resource"], c["check_id"]) for c in report["results"]["failed_checks"]}
    assert failing == {(address, check_id) for address, check_id, _ in skips}


# ------------------------------------------------------------------------------------------------
# (3) What the rest of the project relies on
# ------------------------------------------------------------------------------------------------

COMPUTE = MODULES_DIR / "compute"


def test_run_task_definition_is_16_vcpu_64_gb_in_family_engagement_dagster_run():
    run = one("resource", "aws_ecs_task_definition", "run", COMPUTE)
    assert unquote(run["cpu"]) == "16384"
    assert unquote(run["memory"]) == "65536"
    assert [unquote(c) for c in run["requires_compatibilities"]] == ["FARGATE"]
    assert unquote(run["network_mode"]) == "awsvpc"
    assert run["family"] == "${local.families.run}"

    families = {k: unquote(v) for k, v in module_locals(COMPUTE)["families"].items()}
    prefix = root_default("name_prefix")
    resolved = {k: v.replace("${var.name_prefix}", prefix) for k, v in families.items()}
    assert resolved == {
        "code_server": "engagement-dagster-code-server",
        "webserver": "engagement-dagster-webserver",
        "daemon": "engagement-dagster-daemon",
        "run": "engagement-dagster-run",
    }
    cluster = one("resource", "aws_ecs_cluster", "this", COMPUTE)
    assert cluster["name"] == "${var.name_prefix}" and prefix == "engagement-dagster"
    insights = cluster["setting"][0]
    assert (unquote(insights["name"]), unquote(insights["value"])) == ("containerInsights", "enabled")

    # The run container and the code server container carry dagster.yaml's container_name.
    assert unquote(variables(COMPUTE)["container_name"]["default"]) == "engagement-dagster"
    for name in ("run", "code_server"):
        definition = one("resource", "aws_ecs_task_definition", name, COMPUTE)["container_definitions"]
        assert "name = var.container_name" in definition


def test_every_container_gets_the_environment_and_the_password_from_secrets_manager():
    local = module_locals(COMPUTE)
    environment = local["environment_map"]
    assert REQUIRED_ENV <= set(environment), REQUIRED_ENV - set(environment)
    assert unquote(environment["ENGAGEMENT_ENV"]) == "aws"
    assert environment["DAGSTER_CURRENT_IMAGE"] == "${local.image}"
    assert not any("PASSWORD" in name for name in environment)

    (secret,) = local["secrets"]
    assert unquote(secret["name"]) == "DAGSTER_PG_PASSWORD"
    assert unquote(secret["valueFrom"]) == "${var.db_master_secret_arn}:password::"

    definitions = of_type("aws_ecs_task_definition", COMPUTE)
    assert set(definitions) == {"code_server", "webserver", "daemon", "run"}
    for name, body in definitions.items():
        containers = body["container_definitions"]
        assert "environment = local.environment" in containers, name
        assert "secrets = local.secrets" in containers, name
        assert unquote(body["execution_role_arn"]) == "${aws_iam_role.execution.arn}"
        assert unquote(body["task_role_arn"]) == "${aws_iam_role.task.arn}"

    # Wiring at the root: the secret is the one RDS manages.
    assert module_calls()["compute"]["db_master_secret_arn"] == "${module.database.master_user_secret_arn}"


def _env_references(node) -> set[str]:
    """Names a Dagster YAML file reads from the environment ({env: NAME})."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_references(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_references(v) for v in node)) if node else set()
    return set()


def test_containers_set_everything_the_dagster_yaml_files_read():
    """deploy/dagster.yaml and deploy/workspace.yaml read env vars; a bare name in the launcher's
    env_vars is copied from the daemon's own environment, and the launch fails if it is unset."""
    local = module_locals(COMPUTE)
    provided = set(local["environment_map"]) | {unquote(s["name"]) for s in local["secrets"]}
    checked = 0
    for name in ("dagster.yaml", "workspace.yaml"):
        path = ROOT / "deploy" / name
        if not path.exists():
            continue
        config = yaml.safe_load(path.read_text())
        needed = _env_references(config)
        launcher = (config.get("run_launcher") or {}).get("config") or {}
        needed |= {entry for entry in launcher.get("env_vars", []) if "=" not in entry}
        assert needed <= provided, f"{name} reads {sorted(needed - provided)}: not set in the task definitions"
        if launcher:
            assert launcher.get("container_name", "engagement-dagster") == "engagement-dagster"
        checked += 1
    if not checked:
        pytest.skip("deploy/dagster.yaml and deploy/workspace.yaml do not exist")


def test_services_run_in_private_subnets_without_public_ips():
    services = of_type("aws_ecs_service", COMPUTE)
    assert set(services) == {"code_server", "webserver", "daemon"}
    for name, service in services.items():
        network = service["network_configuration"][0]
        assert network["assign_public_ip"] is False, name
        assert network["subnets"] == "${var.private_subnet_ids}", name
        assert unquote(service["launch_type"]) == "FARGATE"
    # One daemon at a time.
    daemon = services["daemon"]
    assert (daemon["deployment_minimum_healthy_percent"], daemon["deployment_maximum_percent"]) == (0, 100)
    # The UI is never open to the internet.
    validation = variables(TF_DIR)["webserver_ingress_cidr_blocks"]["validation"][0]
    assert "0.0.0.0/0" in validation["condition"]
    assert root_default("webserver_ingress_cidr_blocks") == []
    # No load balancer, public or not: the UI is reached over the VPC (VPN, bastion).
    assert not any(t.startswith(("aws_lb", "aws_alb")) for _, t, _, _ in blocks("resource"))


def test_services_start_the_images_roles_and_load_the_code_location_over_grpc(monkeypatch):
    """Each service runs a role of the image's entrypoint (containers/entrypoint.sh, which the
    container tests run for real); the webserver and daemon read the image's deploy/workspace.yaml,
    whose every env var is set on the containers."""
    from dagster._core.workspace.config_schema import process_workspace_config

    text = (COMPUTE / "tasks.tf").read_text()
    assert 'entrypoint = ["engagement-dagster-entrypoint"]' in text
    roles = re.findall(r"entryPoint = local\.entrypoint\n\s+command\s+= \[\"([a-z-]+)\"\]", text)
    assert sorted(roles) == ["code-server", "daemon", "webserver"]
    dockerfile = (ROOT / "containers" / "Dockerfile").read_text()
    assert "containers/entrypoint.sh /usr/local/bin/engagement-dagster-entrypoint" in dockerfile
    entrypoint = (ROOT / "containers" / "entrypoint.sh").read_text()
    assert all(f"{role})" in entrypoint for role in roles)
    assert "-w deploy/workspace.yaml" in entrypoint

    local = module_locals(COMPUTE)
    for name, value in (("DAGSTER_CODE_SERVER_HOST", "code-server.engagement-dagster.internal"),
                        ("DAGSTER_CODE_SERVER_PORT", "4000"), ("DAGSTER_CODE_LOCATION_NAME", "engagement_dagster")):
        assert name in local["environment_map"]
        monkeypatch.setenv(name, value)
    workspace = yaml.safe_load((ROOT / "deploy" / "workspace.yaml").read_text())
    assert process_workspace_config(workspace).success


def test_containers_set_every_setting_aws_mode_requires():
    from engagement_dagster.core.settings import AWS_SETTINGS

    local = module_locals(COMPUTE)
    assert set(AWS_SETTINGS) <= set(local["environment_map"])
    assert unquote(local["environment_map"]["ENGAGEMENT_ENV"]) == "aws"


def test_database_is_encrypted_private_and_its_password_managed_by_rds():
    database = MODULES_DIR / "database"
    db = one("resource", "aws_db_instance", "this", database)
    assert db["storage_encrypted"] is True
    assert db["publicly_accessible"] is False
    assert db["manage_master_user_password"] is True
    assert db["deletion_protection"] is True
    assert db["iam_database_authentication_enabled"] is True
    assert db["skip_final_snapshot"] is False
    assert "password" not in db and "master_password" not in db
    assert db["backup_retention_period"] == "${var.backup_retention_days}"
    assert root_default("db_backup_retention_days") >= 7
    assert db["vpc_security_group_ids"] == ["${aws_security_group.this.id}"]

    parameters = {unquote(p["name"]): unquote(p["value"])
                  for p in one("resource", "aws_db_parameter_group", "this", database)["parameter"]}
    assert parameters["rds.force_ssl"] == "1"

    # The only way in: PostgreSQL from the tasks' security group.
    ingress = of_type("aws_vpc_security_group_ingress_rule", database)
    assert list(ingress) == ["from_tasks"]
    rule = ingress["from_tasks"]
    assert rule["referenced_security_group_id"] == "${var.tasks_security_group_id}"
    assert (rule["from_port"], rule["to_port"]) == (5432, 5432)
    assert not any("cidr" in key for key in rule)


def test_buckets_are_blocked_versioned_encrypted_logged_and_tls_only():
    storage = MODULES_DIR / "storage"
    buckets = of_type("aws_s3_bucket", storage)
    assert set(buckets) == {"lake", "athena_results", "access_logs"}

    # Names from name_prefix plus account and region: no global default name.
    for name, bucket in buckets.items():
        assert bucket["bucket"].startswith("${local."), name
    for name, value in module_locals(storage).items():
        if name.endswith("_bucket"):
            assert "${var.name_prefix}" in value and "${var.account_id}" in value and "${var.region}" in value

    def config(block_type):
        return {body["bucket"]: body for body in of_type(block_type, storage).values()}

    blocks_ = config("aws_s3_bucket_public_access_block")
    versioning = config("aws_s3_bucket_versioning")
    encryption = config("aws_s3_bucket_server_side_encryption_configuration")
    lifecycle = config("aws_s3_bucket_lifecycle_configuration")
    policies = config("aws_s3_bucket_policy")
    ownership = config("aws_s3_bucket_ownership_controls")
    logging = config("aws_s3_bucket_logging")
    documents = of_type("aws_iam_policy_document", storage, kind="data")
    for name in buckets:
        ref = f"${{aws_s3_bucket.{name}.id}}"
        pab = blocks_[ref]
        assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy",
                                            "ignore_public_acls", "restrict_public_buckets")), name
        assert unquote(versioning[ref]["versioning_configuration"][0]["status"]) == "Enabled", name
        sse = encryption[ref]["rule"][0]["apply_server_side_encryption_by_default"][0]
        assert unquote(sse["sse_algorithm"]) in {"aws:kms", "AES256"}, name
        assert lifecycle[ref]["rule"], name
        assert all(r.get("abort_incomplete_multipart_upload") for r in lifecycle[ref]["rule"]), name
        assert unquote(ownership[ref]["rule"][0]["object_ownership"]) == "BucketOwnerEnforced"
        statements = documents[name]["statement"]
        assert policies[ref]["policy"] == f"${{data.aws_iam_policy_document.{name}.json}}"
        tls = next(s for s in statements if unquote(s.get("sid")) == "DenyInsecureTransport")
        assert unquote(tls["effect"]) == "Deny"
        assert [unquote(a) for a in tls["actions"]] == ["s3:*"]
        condition = tls["condition"][0]
        assert (unquote(condition["variable"]), [unquote(v) for v in condition["values"]]) == \
            ("aws:SecureTransport", ["false"])
    # The data buckets use the project key; their access logs go to the log bucket.
    for name in ("lake", "athena_results"):
        sse = encryption[f"${{aws_s3_bucket.{name}.id}}"]["rule"][0]["apply_server_side_encryption_by_default"][0]
        assert unquote(sse["sse_algorithm"]) == "aws:kms" and sse["kms_master_key_id"] == "${var.kms_key_arn}"
        assert logging[f"${{aws_s3_bucket.{name}.id}}"]["target_bucket"] == "${aws_s3_bucket.access_logs.id}"


def test_catalog_and_athena_workgroup():
    catalog = MODULES_DIR / "catalog"
    databases = of_type("aws_glue_catalog_database", catalog)
    assert {d["name"] for d in databases.values()} == {"${var.glue_raw_database}", "${var.glue_database}"}
    assert (root_default("glue_raw_database"), root_default("glue_database")) == ("engagement_raw", "engagement")

    configuration = one("resource", "aws_athena_workgroup", "this", catalog)["configuration"][0]
    assert configuration["enforce_workgroup_configuration"] is True
    assert configuration["bytes_scanned_cutoff_per_query"] == "${var.bytes_scanned_cutoff_per_query}"
    assert root_default("athena_bytes_scanned_cutoff_per_query") >= 10 * 1024 * 1024
    result = configuration["result_configuration"][0]
    assert unquote(result["encryption_configuration"][0]["encryption_option"]) == "SSE_KMS"
    assert result["output_location"] == "${local.athena_staging}"


def _policy_documents():
    for path, block_type, name, body in blocks("data"):
        if block_type == "aws_iam_policy_document":
            yield path, name, body


def _non_resource_actions(checkov_python: Path, actions: set[str]) -> dict[str, bool]:
    """action -> True when AWS offers no resource-level permission for it (policy_sentry's IAM
    data, shipped with checkov: the same data checkov's CKV_AWS_356 uses)."""
    script = (
        "import json, sys\n"
        "from policy_sentry.querying.actions import get_action_data\n"
        "out = {}\n"
        "for action in json.loads(sys.argv[1]):\n"
        "    service, name = action.split(':')\n"
        "    rows = next(iter(get_action_data(service, name).values()), [])\n"
        "    out[action] = bool(rows) and all(r['resource_arn_format'] == '*' for r in rows)\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([str(checkov_python), "-c", script, json.dumps(sorted(actions))],
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def test_iam_resource_star_only_where_aws_requires_it_and_commented(checkov_python):
    wildcard_statements = []
    for path, name, body in _policy_documents():
        for statement in body.get("statement", []):
            resources = statement.get("resources", [])
            if isinstance(resources, list) and '"*"' in resources:
                wildcard_statements.append((path, name, statement))
            elif isinstance(resources, str):
                assert '"*"' not in resources, (path, name, statement.get("sid"))
    assert wildcard_statements

    # A key policy's "*" is the key it is attached to: allowed only in the kms module's key policy.
    key_policy = one("resource", "aws_kms_key", "this", MODULES_DIR / "kms")
    assert key_policy["policy"] == "${data.aws_iam_policy_document.key.json}"

    actions = set()
    for path, name, statement in wildcard_statements:
        assert unquote(statement.get("effect", '"Allow"')) == "Allow"
        if (path.parent.name, name) == ("kms", "key"):
            continue
        actions |= {unquote(a) for a in statement["actions"]}
        assert unquote(statement["sid"]).endswith("RequiresWildcard"), (path, statement["sid"])
    verdict = _non_resource_actions(checkov_python, actions)
    restrictable = sorted(a for a, no_resource_level in verdict.items() if not no_resource_level)
    assert not restrictable, f"these actions can be scoped to resources: {restrictable}"

    # Every statement with Resource "*" carries a comment right above it saying why.
    for path in TF_FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not re.match(r"\s*statement\s*\{\s*$", line):
                continue
            depth, body = 0, []
            for following in lines[i:]:
                depth += following.count("{") - following.count("}")
                body.append(following)
                if depth == 0:
                    break
            if not re.search(r'resources\s*=\s*\["\*"\]', "\n".join(body)):
                continue
            comments, j = [], i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                comments.append(lines[j])
                j -= 1
            assert any('Resource "*"' in c for c in comments), f"{path.relative_to(TF_DIR)}:{i + 1}"

    # No policy is written as inline JSON, where the checks above could not see it.
    for path in TF_FILES:
        assert not re.search(r'\bResource\s*=', path.read_text()), path


def test_run_launcher_and_state_machine_may_pass_only_the_projects_roles():
    task_policy = one("data", "aws_iam_policy_document", "task", COMPUTE)
    (pass_role,) = [s for s in task_policy["statement"] if [unquote(a) for a in s["actions"]] == ["iam:PassRole"]]
    assert pass_role["resources"] == ["${aws_iam_role.task.arn}", "${aws_iam_role.execution.arn}"]
    (run_task,) = [s for s in task_policy["statement"] if [unquote(a) for a in s["actions"]] == ["ecs:RunTask"]]
    assert unquote(run_task["condition"][0]["variable"]) == "ecs:cluster"

    orchestration = MODULES_DIR / "orchestration"
    sfn_policy = one("data", "aws_iam_policy_document", "state_machine", orchestration)
    (sfn_pass,) = [s for s in sfn_policy["statement"] if [unquote(a) for a in s["actions"]] == ["iam:PassRole"]]
    assert sfn_pass["resources"] == ["${var.task_role_arn}", "${var.execution_role_arn}"]


def test_orchestration_renders_the_asl_schedules_it_and_encrypts_its_topic():
    orchestration = MODULES_DIR / "orchestration"
    machine = one("resource", "aws_sfn_state_machine", "weekly_refresh", orchestration)
    assert machine["definition"] == "${templatefile(var.definition_path, local.definition_vars)}"
    main = (TF_DIR / "main.tf").read_text()
    assert '"${path.module}/../step_functions/weekly_refresh.asl.json"' in main

    rule = one("resource", "aws_cloudwatch_event_rule", "weekly", orchestration)
    assert rule["schedule_expression"] == "${var.schedule_expression}"
    assert root_default("schedule_expression") == "cron(0 6 ? * MON *)"
    target = one("resource", "aws_cloudwatch_event_target", "weekly", orchestration)
    assert target["role_arn"] == "${aws_iam_role.events.arn}"
    template = target["input_transformer"][0]["input_template"]
    assert '"AssignPublicIp": "DISABLED"' in template

    topic = one("resource", "aws_sns_topic", "failures", orchestration)
    assert topic["kms_master_key_id"] == "${var.kms_key_arn}"


def test_the_asl_file_renders_with_the_template_variables():
    """deploy/step_functions/weekly_refresh.asl.json (generated by `engagement-dagster export-sfn`):
    every ${...} in it must be a variable the module passes, or `terraform plan` fails."""
    asl = TF_DIR.parent / "step_functions" / "weekly_refresh.asl.json"
    known = set(module_locals(MODULES_DIR / "orchestration")["definition_vars"])
    text = asl.read_text()
    assert "%{" not in text, "templatefile would read %{ as a directive: write %%{"
    placeholders = set(re.findall(r"(?<!\$)\$\{([^}]*)\}", text))
    assert placeholders <= known, f"unknown template variables: {placeholders - known}"
    rendered = re.sub(r"(?<!\$)\$\{([^}]*)\}",
                      lambda m: '["x"]' if m.group(1).endswith("_json") else "x", text).replace("$${", "${")
    definition = json.loads(rendered)
    assert "StartAt" in definition and "States" in definition


def test_outputs_name_what_other_parts_must_match():
    outputs = set()
    for path in TF_DIR.glob("*.tf"):
        for block in parsed(path).get("output", []):
            outputs |= {unquote(k) for k in block}
    assert {
        "cluster_name", "task_families", "run_task_family", "container_name", "sns_topic_arn",
        "lake_bucket", "athena_results_bucket", "db_endpoint", "glue_raw_database", "glue_database",
        "athena_workgroup", "athena_staging", "state_machine_arn", "ecr_repository_url",
        "knowledge_base_id", "data_source_id", "kb_bucket", "prediction_api_url", "prediction_api_key_ids",
        "prediction_api_repository_url", "prediction_cache_table",
    } <= outputs
    # Required inputs: only what differs per account.
    required = {name for name, body in variables(TF_DIR).items() if "default" not in body}
    assert required == {"aws_region", "vpc_id", "private_subnet_ids", "image_tag"}


def test_one_orchestrator_at_a_time():
    """The daemon's schedule or the state machine's rule, never both: two refreshes of one week
    would collide, and the daemon's run monitoring would fail the state machine's runs."""
    root = (TF_DIR / "main.tf").read_text()
    assert 'run_daemon         = var.orchestrator == "dagster"' in root
    assert 'schedule_enabled    = var.orchestrator == "step_functions"' in root
    services = (COMPUTE / "services.tf").read_text()
    daemon = services[services.index('resource "aws_ecs_service" "daemon"'):]
    assert "desired_count           = var.run_daemon ? 1 : 0" in daemon.split("\nresource ")[0]
    rule = (MODULES_DIR / "orchestration" / "main.tf").read_text()
    assert 'state               = var.schedule_enabled ? "ENABLED" : "DISABLED"' in rule
    assert root_default("orchestrator") == "dagster"


# ------------------------------------------------------------------------------------------------
# (4) The Bedrock knowledge base (modules/knowledge_base)
# ------------------------------------------------------------------------------------------------

KB = MODULES_DIR / "knowledge_base"
KB_ENVIRONMENT = {"ENGAGEMENT_KB_BUCKET", "ENGAGEMENT_KB_ID", "ENGAGEMENT_KB_DATA_SOURCE_ID",
                  "ENGAGEMENT_LLM_BACKEND", "ENGAGEMENT_BEDROCK_MODEL_ID"}


def _resolve_local(value, local: dict):
    """A module local's literal value when value is exactly `${local.name}`."""
    match = re.fullmatch(r"\$\{local\.(\w+)\}", str(value))
    return unquote(local[match.group(1)]) if match else unquote(value)


def test_knowledge_base_is_wired_from_the_root_and_can_be_left_out():
    call = module_calls()["knowledge_base"]
    assert call["count"] == "${var.knowledge_base ? 1 : 0}"
    knowledge_base = variables(TF_DIR)["knowledge_base"]
    assert knowledge_base["type"] in {"bool", "${bool}"} and knowledge_base["default"] is True
    assert call["task_role_name"] == "${module.compute.task_role_name}"
    assert call["kms_key_arn"] == "${module.kms.key_arn}"
    assert call["access_logs_bucket"] == "${module.storage.access_logs_bucket}"
    # The access log bucket admits the documents bucket's log delivery.
    storage = module_calls()["storage"]
    assert storage["extra_logged_bucket_arns"] == (
        "${var.knowledge_base ? [module.knowledge_base[0].kb_bucket_arn] : []}")
    access_logs = one("data", "aws_iam_policy_document", "access_logs", MODULES_DIR / "storage")
    (delivery,) = [s for s in access_logs["statement"] if unquote(s["sid"]) == "S3ServerAccessLogsFromProjectBuckets"]
    source_arn = next(c for c in delivery["condition"] if unquote(c["variable"]) == "aws:SourceArn")
    assert "var.extra_logged_bucket_arns" in str(source_arn["values"])

    # Every container gets the knowledge base's settings, only when it exists (never an empty value).
    compute = module_calls()["compute"]
    assert compute["knowledge_base"] == "${var.knowledge_base}"
    assert compute["kb_bucket"] == '${var.knowledge_base ? module.knowledge_base[0].kb_bucket : ""}'
    assert compute["kb_id"] == '${var.knowledge_base ? module.knowledge_base[0].knowledge_base_id : ""}'
    assert compute["kb_data_source_id"] == '${var.knowledge_base ? module.knowledge_base[0].data_source_id : ""}'
    assert compute["bedrock_model_id"] == '${var.knowledge_base ? var.agent_model_id : ""}'
    local = module_locals(COMPUTE)
    text = (COMPUTE / "tasks.tf").read_text()
    block = text[text.index("knowledge_base_environment = "):text.index("all_environment = ")]
    assert block.startswith("knowledge_base_environment = !var.knowledge_base ? {} : {")
    assert set(re.findall(r"\b(ENGAGEMENT_[A-Z_]+)\s*=", block)) == KB_ENVIRONMENT
    assert 'ENGAGEMENT_LLM_BACKEND       = "bedrock"' in block
    assert "local.knowledge_base_environment" in local["all_environment"]
    assert not KB_ENVIRONMENT & set(local["environment_map"])  # none unconditional
    assert "if local.all_environment[name] != \"\"" in text

    outputs = {}
    for block_ in parsed(TF_DIR / "outputs.tf")["output"]:
        outputs.update({unquote(k): v for k, v in block_.items()})
    for name in ("knowledge_base_id", "data_source_id", "kb_bucket"):
        assert outputs[name]["value"] == f"${{var.knowledge_base ? module.knowledge_base[0].{name} : null}}"


def test_knowledge_base_embeds_with_titan_v2_1024_into_a_matching_s3_vectors_index():
    local = module_locals(KB)
    kb = one("resource", "aws_bedrockagent_knowledge_base", "this", KB)
    config = kb["knowledge_base_configuration"][0]
    assert unquote(config["type"]) == "VECTOR"
    vector = config["vector_knowledge_base_configuration"][0]
    assert vector["embedding_model_arn"] == "${local.embedding_model_arn}"
    assert unquote(local["embedding_model_id"]) == "amazon.titan-embed-text-v2:0"
    assert unquote(local["embedding_model_arn"]) == \
        "arn:${var.partition}:bedrock:${var.region}::foundation-model/${local.embedding_model_id}"
    embedding = vector["embedding_model_configuration"][0]["bedrock_embedding_model_configuration"][0]
    dimensions = _resolve_local(embedding["dimensions"], local)
    assert dimensions == 1024
    assert unquote(embedding["embedding_data_type"]) == "FLOAT32"

    storage = kb["storage_configuration"][0]
    assert unquote(storage["type"]) == "S3_VECTORS"
    (s3_vectors,) = storage["s3_vectors_configuration"]
    # The provider takes index_arn, or index_name with vector_bucket_arn: never both.
    assert s3_vectors["index_arn"] == "${aws_s3vectors_index.this.index_arn}"
    assert not {"index_name", "vector_bucket_arn"} & set(s3_vectors)
    assert kb["role_arn"] == "${aws_iam_role.knowledge_base.arn}"

    index = one("resource", "aws_s3vectors_index", "this", KB)
    assert _resolve_local(index["dimension"], local) == dimensions
    assert unquote(index["distance_metric"]) == "cosine"
    assert unquote(index["data_type"]) == "float32"
    assert index["vector_bucket_name"] == "${aws_s3vectors_vector_bucket.this.vector_bucket_name}"
    (metadata,) = index["metadata_configuration"]
    non_filterable = {unquote(k) for k in metadata["non_filterable_metadata_keys"]}
    assert non_filterable == {"AMAZON_BEDROCK_TEXT", "AMAZON_BEDROCK_METADATA"}
    assert not {"snapshot_week", "doc_id"} & non_filterable  # retrieval filters on these

    bucket = one("resource", "aws_s3vectors_vector_bucket", "this", KB)
    (encryption,) = bucket["encryption_configuration"]
    assert unquote(encryption["sse_type"]) == "aws:kms" and encryption["kms_key_arn"] == "${var.kms_key_arn}"
    # S3 Vectors' background indexing decrypts with the project key: the key policy allows it,
    # for this account's <name_prefix>-* vector buckets only.
    key = one("data", "aws_iam_policy_document", "key", MODULES_DIR / "kms")
    (indexing,) = [s for s in key["statement"] if unquote(s["sid"]) == "S3VectorsIndexingProjectVectorBuckets"]
    assert [unquote(a) for a in indexing["actions"]] == ["kms:Decrypt"]
    assert [unquote(i) for i in indexing["principals"][0]["identifiers"]] == ["indexing.s3vectors.amazonaws.com"]
    conditions = {unquote(c["variable"]): [unquote(v) for v in c["values"]] for c in indexing["condition"]}
    assert conditions["aws:SourceAccount"] == ["${var.account_id}"]
    assert conditions["aws:SourceArn"] == [
        "arn:${var.partition}:s3vectors:${var.region}:${var.account_id}:bucket/${var.name_prefix}-*"]
    assert unquote(local["vector_bucket_name"]).startswith("${var.name_prefix}-")


def test_data_source_ingests_only_kb_in_fixed_size_chunks_of_300_tokens_with_20_percent_overlap():
    local = module_locals(KB)
    source = one("resource", "aws_bedrockagent_data_source", "documents", KB)
    assert source["knowledge_base_id"] == "${aws_bedrockagent_knowledge_base.this.id}"
    assert unquote(source["data_deletion_policy"]) == "DELETE"
    configuration = source["data_source_configuration"][0]
    assert unquote(configuration["type"]) == "S3"
    s3 = configuration["s3_configuration"][0]
    assert s3["bucket_arn"] == "${aws_s3_bucket.documents.arn}"
    assert [_resolve_local(p, local) for p in s3["inclusion_prefixes"]] == ["kb/"]
    assert source["server_side_encryption_configuration"][0]["kms_key_arn"] == "${var.kms_key_arn}"

    chunking = source["vector_ingestion_configuration"][0]["chunking_configuration"][0]
    assert unquote(chunking["chunking_strategy"]) == "FIXED_SIZE"
    fixed = chunking["fixed_size_chunking_configuration"][0]
    assert _resolve_local(fixed["max_tokens"], local) == 300
    assert _resolve_local(fixed["overlap_percentage"], local) == 20
    # The role's policy exists before the knowledge base and the data source, and outlives them
    # on destroy (DELETE removes the vectors through it).
    for resource in (source, one("resource", "aws_bedrockagent_knowledge_base", "this", KB)):
        assert resource["depends_on"] == ["${aws_iam_role_policy.knowledge_base}"]


def test_documents_bucket_follows_the_storage_buckets_pattern():
    documents = one("resource", "aws_s3_bucket", "documents", KB)
    assert documents["bucket"] == "${local.documents_bucket}"
    name = unquote(module_locals(KB)["documents_bucket"])
    assert all(part in name for part in ("${var.name_prefix}", "${var.account_id}", "${var.region}"))
    ref = "${aws_s3_bucket.documents.id}"

    pab = one("resource", "aws_s3_bucket_public_access_block", "documents", KB)
    assert pab["bucket"] == ref
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                        "restrict_public_buckets"))
    versioning = one("resource", "aws_s3_bucket_versioning", "documents", KB)
    assert unquote(versioning["versioning_configuration"][0]["status"]) == "Enabled"
    sse = one("resource", "aws_s3_bucket_server_side_encryption_configuration", "documents", KB)
    default = sse["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert unquote(default["sse_algorithm"]) == "aws:kms" and default["kms_master_key_id"] == "${var.kms_key_arn}"
    ownership = one("resource", "aws_s3_bucket_ownership_controls", "documents", KB)
    assert unquote(ownership["rule"][0]["object_ownership"]) == "BucketOwnerEnforced"
    logging = one("resource", "aws_s3_bucket_logging", "documents", KB)
    assert logging["target_bucket"] == "${var.access_logs_bucket}"
    lifecycle = one("resource", "aws_s3_bucket_lifecycle_configuration", "documents", KB)
    assert all(rule.get("abort_incomplete_multipart_upload") for rule in lifecycle["rule"])
    policy = one("resource", "aws_s3_bucket_policy", "documents", KB)
    assert policy["policy"] == "${data.aws_iam_policy_document.documents.json}"
    statements = {unquote(s["sid"]): s for s in one("data", "aws_iam_policy_document", "documents", KB)["statement"]}
    tls = statements["DenyInsecureTransport"]
    assert unquote(tls["effect"]) == "Deny"
    condition = tls["condition"][0]
    assert (unquote(condition["variable"]), [unquote(v) for v in condition["values"]]) == (
        "aws:SecureTransport", ["false"])
    assert unquote(statements["DenyTlsOlderThan12"]["condition"][0]["variable"]) == "s3:TlsVersion"


def _allow_statements(document: dict) -> dict[str, dict]:
    return {unquote(s.get("sid", '""')): s for s in document["statement"]
            if unquote(s.get("effect", '"Allow"')) == "Allow"}


def test_knowledge_base_iam_is_scoped_without_wildcards():
    documents = {name: body for _, name, body in
                 ((p, n, b) for p, n, b in _policy_documents() if p.parent == KB)}
    assert set(documents) == {"documents", "bedrock_assume", "knowledge_base", "agent"}
    for name in ("bedrock_assume", "knowledge_base", "agent"):
        for sid, statement in _allow_statements(documents[name]).items():
            actions = [unquote(a) for a in statement["actions"]]
            assert not any("*" in action for action in actions), (name, sid, actions)
            resources = statement.get("resources", [])
            resources = [unquote(r) for r in ([resources] if isinstance(resources, str) else resources)]
            for resource in resources:
                assert resource != "*", (name, sid)
                # Only object keys end in a wildcard (a prefix of the documents bucket).
                assert "*" not in resource or re.fullmatch(r"\$\{aws_s3_bucket\.documents\.arn\}/[^*]*\*", resource), \
                    (name, sid, resource)

    # Bedrock assumes the role, for this account's knowledge bases only.
    (trust,) = documents["bedrock_assume"]["statement"]
    assert [unquote(i) for i in trust["principals"][0]["identifiers"]] == ["bedrock.amazonaws.com"]
    conditions = {unquote(c["variable"]): [unquote(v) for v in c["values"]] for c in trust["condition"]}
    assert conditions["aws:SourceAccount"] == ["${var.account_id}"]
    assert unquote(module_locals(KB)["knowledge_base_arn_pattern"]).startswith(
        "arn:${var.partition}:bedrock:${var.region}:${var.account_id}:knowledge-base/")

    role = _allow_statements(documents["knowledge_base"])
    grants = {sid: ({unquote(a) for a in s["actions"]}, [unquote(r) for r in s["resources"]])
              for sid, s in role.items()}
    assert grants == {
        "EmbedWithTitanV2": ({"bedrock:InvokeModel"}, ["${local.embedding_model_arn}"]),
        "ListDocumentsBucket": ({"s3:ListBucket"}, ["${aws_s3_bucket.documents.arn}"]),
        "ReadDocuments": ({"s3:GetObject"}, ["${aws_s3_bucket.documents.arn}/${local.documents_prefix}*"]),
        "UseProjectKey": ({"kms:Decrypt", "kms:GenerateDataKey"}, ["${var.kms_key_arn}"]),
        "ReadWriteVectorIndex": ({"s3vectors:PutVectors", "s3vectors:GetVectors", "s3vectors:DeleteVectors",
                                  "s3vectors:QueryVectors", "s3vectors:GetIndex"},
                                 ["${aws_s3vectors_index.this.index_arn}"]),
    }

    agent = _allow_statements(documents["agent"])
    grants = {sid: ({unquote(a) for a in s["actions"]}, s["resources"]) for sid, s in agent.items()}
    kb_arn = ["${aws_bedrockagent_knowledge_base.this.arn}"]
    assert grants == {
        "ListDocumentsBucket": ({"s3:ListBucket"}, ["${aws_s3_bucket.documents.arn}"]),
        "PublishDocuments": ({"s3:PutObject", "s3:GetObject", "s3:DeleteObject"},
                             ['"${aws_s3_bucket.documents.arn}/*"']),
        "SyncKnowledgeBase": ({"bedrock:StartIngestionJob", "bedrock:GetIngestionJob", "bedrock:ListIngestionJobs"},
                              kb_arn),
        "RetrieveFromKnowledgeBase": ({"bedrock:Retrieve"}, kb_arn),
        "InvokeAgentModel": ({"bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"},
                             "${local.agent_model_arns}"),
    }
    # Attached to the role the application already runs as.
    attachment = one("resource", "aws_iam_role_policy", "agent", KB)
    assert attachment["role"] == "${var.task_role_name}"
    assert attachment["policy"] == "${data.aws_iam_policy_document.agent.json}"
    compute_outputs = {unquote(k): v for path in COMPUTE.glob("outputs.tf")
                       for block in parsed(path)["output"] for k, v in block.items()}
    assert compute_outputs["task_role_name"]["value"] == "${aws_iam_role.task.name}"


def test_agent_model_is_one_configurable_claude_model_and_its_arns_have_no_wildcards():
    variable = variables(TF_DIR)["agent_model_id"]
    default = unquote(variable["default"])
    (pattern,) = [s for s in hcl_string_literals(variable["validation"][0]["condition"]) if "claude" in s]
    for model in (default, "anthropic.claude-3-5-haiku-20241022-v1:0", "us.anthropic.claude-3-5-haiku-20241022-v1:0",
                  "eu.anthropic.claude-3-7-sonnet-20250219-v1:0"):
        assert re.fullmatch(pattern, model), model
    for model in ("*", "anthropic.*", "amazon.titan-text-express-v1",
                  "global.anthropic.claude-haiku-4-5-20251001-v1:0"):
        assert not re.fullmatch(pattern, model), model

    # The module's replace() strips a geographic profile prefix to find the foundation model.
    text = (KB / "agent.tf").read_text()
    (strip,) = re.findall(r'replace\(var\.agent_model_id, "/(.*)/", ""\)', text)
    strip = hcl_string_literals(f'"{strip}"')[0]
    profile = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    assert re.sub(strip, "", profile) == profile.removeprefix("us.")
    assert re.sub(strip, "", default) == default
    arns = unquote(module_locals(KB)["agent_model_arns"])
    assert "foundation-model/${local.agent_foundation_model_id}" in arns
    assert "inference-profile/${var.agent_model_id}" in arns
    assert "*" not in arns
    # An inference profile without its destination regions is refused at plan time.
    assert "!local.agent_model_is_profile || length(var.agent_model_regions) > 0" in text



# ------------------------------------------------------------------------------------------------
# (5) The prediction API (modules/prediction_api): API Gateway, the Lambda function, the cache table
# ------------------------------------------------------------------------------------------------

API = MODULES_DIR / "prediction_api"


def _root_outputs() -> dict[str, dict]:
    out = {}
    for block in parsed(TF_DIR / "outputs.tf")["output"]:
        out.update({unquote(k): v for k, v in block.items()})
    return out


def test_prediction_api_is_wired_from_the_root_and_can_be_left_out():
    from engagement_dagster.core.settings import AWS_SETTINGS

    call = module_calls()["prediction_api"]
    assert call["count"] == "${var.prediction_api ? 1 : 0}"
    switch = variables(TF_DIR)["prediction_api"]
    assert switch["type"] in {"bool", "${bool}"} and switch["default"] is True
    assert call["kms_key_arn"] == "${module.kms.key_arn}"
    assert call["lake_bucket_arn"] == "${module.storage.lake_bucket_arn}"
    assert call["lake_prefix"] == "${var.lake_prefix}"
    # One release, one tag, unless the API image's is given.
    assert call["image_tag"] == "${coalesce(var.prediction_api_image_tag, var.image_tag)}"
    assert root_default("prediction_api_image_tag") is None
    # Outside the VPC unless asked; inside, in the private subnets.
    assert call["subnet_ids"] == "${var.prediction_api_in_vpc ? var.private_subnet_ids : []}"
    assert root_default("prediction_api_in_vpc") is False

    # The function opens the lake AWS mode describes, with the values the Dagster containers get.
    names = {unquote(n) for n in module_locals(TF_DIR)["lake_setting_names"]}
    assert set(AWS_SETTINGS) | {"ENGAGEMENT_LAKE_PREFIX"} <= names
    assert all(name.startswith("ENGAGEMENT_") for name in names)  # Lambda refuses AWS_* names
    settings = call["settings_environment"]
    assert "module.compute.environment" in settings and "contains(local.lake_setting_names, name)" in settings

    outputs = _root_outputs()
    for name, module_output in (("prediction_api_url", "invoke_url"), ("prediction_api_key_ids", "api_key_ids"),
                                ("prediction_api_repository_url", "repository_url"),
                                ("prediction_cache_table", "cache_table")):
        assert outputs[name]["value"] == f"${{var.prediction_api ? module.prediction_api[0].{module_output} : null}}"


def test_every_api_method_requires_a_key_and_every_path_reaches_the_live_alias():
    rest_api = one("resource", "aws_api_gateway_rest_api", "this", API)
    assert [unquote(t) for t in rest_api["endpoint_configuration"][0]["types"]] == ["REGIONAL"]
    assert unquote(rest_api["api_key_source"]) == "HEADER"
    proxy = one("resource", "aws_api_gateway_resource", "proxy", API)
    assert unquote(proxy["path_part"]) == "{proxy+}"
    assert proxy["parent_id"] == "${aws_api_gateway_rest_api.this.root_resource_id}"

    methods = of_type("aws_api_gateway_method", API)
    assert set(methods) == {"root", "proxy"}
    assert methods["root"]["resource_id"] == "${aws_api_gateway_rest_api.this.root_resource_id}"
    assert methods["proxy"]["resource_id"] == "${aws_api_gateway_resource.proxy.id}"
    for name, method in methods.items():
        # API keys are api_key_required on the method; there is no authorization type "API_KEY".
        assert method["api_key_required"] is True, name
        assert unquote(method["authorization"]) == "NONE", name
        assert unquote(method["http_method"]) == "ANY", name

    integrations = of_type("aws_api_gateway_integration", API)
    assert set(integrations) == set(methods)
    for name, integration in integrations.items():
        assert unquote(integration["type"]) == "AWS_PROXY"
        assert unquote(integration["integration_http_method"]) == "POST"
        assert integration["uri"] == "${aws_lambda_alias.live.invoke_arn}"
        assert integration["http_method"] == f"${{aws_api_gateway_method.{name}.http_method}}"

    # Any change to a route redeploys, new deployment first; the stage serves it.
    deployment = one("resource", "aws_api_gateway_deployment", "this", API)
    trigger = deployment["triggers"]["redeployment"]
    assert all(f"aws_api_gateway_{kind}.{name}" in trigger
               for kind in ("method", "integration") for name in methods)
    assert deployment["lifecycle"][0]["create_before_destroy"] is True
    stage = one("resource", "aws_api_gateway_stage", "this", API)
    assert stage["deployment_id"] == "${aws_api_gateway_deployment.this.id}"

    # Only this API's stage may invoke the function, through the alias it integrates with.
    permission = one("resource", "aws_lambda_permission", "api_gateway", API)
    assert unquote(permission["principal"]) == "apigateway.amazonaws.com"
    assert unquote(permission["source_arn"]) == "${aws_api_gateway_rest_api.this.execution_arn}/${var.stage_name}/*/*"
    assert permission["qualifier"] == "${aws_lambda_alias.live.name}"


def test_stage_and_each_key_are_throttled_and_every_key_is_in_the_usage_plan():
    stage = one("resource", "aws_api_gateway_stage", "this", API)
    assert stage["cache_cluster_enabled"] is False
    assert stage["xray_tracing_enabled"] is True
    access = stage["access_log_settings"][0]
    assert access["destination_arn"] == "${aws_cloudwatch_log_group.access.arn}"
    assert "$context.identity.apiKeyId" in access["format"]
    assert not re.search(r"\$context\.identity\.apiKey(?!Id)", access["format"])  # never the key's value

    (settings,) = one("resource", "aws_api_gateway_method_settings", "all", API)["settings"]
    assert (settings["throttling_rate_limit"], settings["throttling_burst_limit"]) == (
        "${var.stage_rate_limit}", "${var.stage_burst_limit}")
    assert settings["metrics_enabled"] is True
    assert settings["data_trace_enabled"] is False  # bodies are customer data
    assert settings["caching_enabled"] is False
    assert unquote(one("resource", "aws_api_gateway_method_settings", "all", API)["method_path"]) == "*/*"

    plan = one("resource", "aws_api_gateway_usage_plan", "this", API)
    (bound,) = plan["api_stages"]
    assert (bound["api_id"], bound["stage"]) == ("${aws_api_gateway_rest_api.this.id}",
                                                  "${aws_api_gateway_stage.this.stage_name}")
    (throttle,) = plan["throttle_settings"]
    assert (throttle["rate_limit"], throttle["burst_limit"]) == ("${var.key_rate_limit}", "${var.key_burst_limit}")
    (quota,) = plan["quota_settings"]
    assert quota["limit"] == "${var.key_quota_per_day}" and unquote(quota["period"]) == "DAY"

    declared = variables(API)
    for name in ("stage_rate_limit", "stage_burst_limit", "key_rate_limit", "key_burst_limit", "key_quota_per_day"):
        assert declared[name]["default"] > 0, name
    # A key is no wider than the stage.
    assert declared["key_rate_limit"]["default"] <= declared["stage_rate_limit"]["default"]
    assert declared["key_burst_limit"]["default"] <= declared["stage_burst_limit"]["default"]

    # One key per name, each bound to the plan; the application accepts exactly their values.
    key = one("resource", "aws_api_gateway_api_key", "client", API)
    assert key["for_each"] == "${toset(var.api_key_names)}" and "value" not in key
    binding = one("resource", "aws_api_gateway_usage_plan_key", "client", API)
    assert binding["for_each"] == "${aws_api_gateway_api_key.client}"
    assert (binding["key_id"], unquote(binding["key_type"])) == ("${each.value.id}", "API_KEY")
    assert binding["usage_plan_id"] == "${aws_api_gateway_usage_plan.this.id}"
    secret = one("resource", "aws_secretsmanager_secret_version", "api_keys", API)
    assert secret["secret_string"] == (
        "${jsonencode([for name in sort(var.api_key_names) : aws_api_gateway_api_key.client[name].value])}")
    assert one("resource", "aws_secretsmanager_secret", "api_keys", API)["kms_key_id"] == "${var.kms_key_arn}"


def test_cache_table_has_ttl_point_in_time_recovery_and_the_project_key_in_the_applications_layout():
    from engagement_dagster.api import cache

    table = one("resource", "aws_dynamodb_table", "cache", API)
    assert unquote(table["billing_mode"]) == "PAY_PER_REQUEST"
    assert unquote(table["hash_key"]) == cache.PARTITION_KEY == "pk"
    assert "range_key" not in table
    (attribute,) = table["attribute"]
    assert (unquote(attribute["name"]), unquote(attribute["type"])) == (cache.PARTITION_KEY, "S")
    (ttl,) = table["ttl"]
    assert ttl["enabled"] is True and unquote(ttl["attribute_name"]) == cache.TTL_ATTRIBUTE == "expires_at"
    assert table["point_in_time_recovery"][0]["enabled"] is True
    (sse,) = table["server_side_encryption"]
    assert sse["enabled"] is True and sse["kms_key_arn"] == "${var.kms_key_arn}"


def test_function_runs_the_api_image_with_what_the_application_reads():
    function = one("resource", "aws_lambda_function", "api", API)
    local = module_locals(API)
    assert unquote(function["package_type"]) == "Image"
    assert function["image_uri"] == "${local.image}"
    assert unquote(local["image"]) == "${aws_ecr_repository.api.repository_url}:${var.image_tag}"
    assert unquote(function["tracing_config"][0]["mode"]) == "Active"
    assert function["reserved_concurrent_executions"] == "${var.reserved_concurrency}"
    assert function["kms_key_arn"] == "${var.kms_key_arn}"
    assert function["publish"] is True
    assert one("resource", "aws_lambda_alias", "live", API)["function_version"] == "${aws_lambda_function.api.version}"
    declared = variables(API)
    assert {"memory_mb", "timeout_seconds", "reserved_concurrency", "subnet_ids"} <= set(declared)
    assert declared["timeout_seconds"]["default"] <= 29  # API Gateway's integration timeout
    # The log groups are the project key's (/<name_prefix>/...).
    for name in ("function", "access"):
        group = one("resource", "aws_cloudwatch_log_group", name, API)
        assert unquote(group["name"]).startswith("/${var.name_prefix}/") and group["kms_key_id"] == "${var.kms_key_arn}"
    assert function["logging_config"][0]["log_group"] == "${aws_cloudwatch_log_group.function.name}"

    # The environment: the lake's settings and the API's own, names the application really reads,
    # no key or password in it (the keys come from the secret it names).
    assert function["environment"][0]["variables"] == "${local.environment}"
    assert local["environment"] == "${merge(var.settings_environment, local.api_environment)}"
    environment = local["api_environment"]
    assert unquote(environment["ENGAGEMENT_ENV"]) == "aws"
    assert unquote(environment["ENGAGEMENT_API_CACHE"]) == "dynamodb"
    assert environment["ENGAGEMENT_API_CACHE_TABLE"] == "${aws_dynamodb_table.cache.name}"
    assert environment["ENGAGEMENT_API_KEYS_SECRET_ARN"] == "${aws_secretsmanager_secret.api_keys.arn}"
    assert "ENGAGEMENT_API_KEYS" not in environment
    package = ROOT / "engagement_dagster"
    sources = [*(package / "api").glob("*.py"), package / "core" / "settings.py"]
    application = "\n".join(path.read_text() for path in sources)
    for name in environment:
        assert f'"{name}"' in application, f"{name}: the application never reads it"


def test_function_role_reads_only_the_registry_and_uses_only_the_cache_table():
    document = one("data", "aws_iam_policy_document", "function", API)
    grants = {sid: ({unquote(a) for a in s["actions"]}, [unquote(r) for r in s["resources"]])
              for sid, s in _allow_statements(document).items()}
    assert grants == {
        "ListModelRegistry": ({"s3:ListBucket"}, ["${var.lake_bucket_arn}"]),
        "ReadModelRegistry": ({"s3:GetObject"}, ["${var.lake_bucket_arn}/${local.registry_prefix}*"]),
        "UsePredictionCache": ({"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:BatchGetItem",
                                "dynamodb:BatchWriteItem"}, ["${aws_dynamodb_table.cache.arn}"]),
        "ReadApiKeys": ({"secretsmanager:GetSecretValue"}, ["${aws_secretsmanager_secret.api_keys.arn}"]),
        "DecryptWithProjectKey": ({"kms:Decrypt"}, ["${var.kms_key_arn}"]),
        "WriteFunctionLogs": ({"logs:CreateLogStream", "logs:PutLogEvents"},
                              ["${aws_cloudwatch_log_group.function.arn}:*"]),
        "TracingRequiresWildcard": ({"xray:GetSamplingRules", "xray:GetSamplingTargets", "xray:PutTelemetryRecords",
                                     "xray:PutTraceSegments"}, ["*"]),
    }
    (listing,) = _allow_statements(document)["ListModelRegistry"]["condition"]
    assert (unquote(listing["variable"]), [unquote(v) for v in listing["values"]]) == (
        "s3:prefix", ["${local.registry_prefix}*"])
    # models/ under the lake prefix: the registry's layout (engagement_dagster/core/ml/registry.py).
    assert unquote(module_locals(API)["registry_prefix"]) == (
        '${var.lake_prefix == "" ? "models/" : "${trim(var.lake_prefix, "/")}/models/"}')

    # Lambda assumes the role for this account only; the image repository admits Lambda for this function.
    (trust,) = one("data", "aws_iam_policy_document", "lambda_assume", API)["statement"]
    assert [unquote(i) for i in trust["principals"][0]["identifiers"]] == ["lambda.amazonaws.com"]
    (pull,) = one("data", "aws_iam_policy_document", "repository", API)["statement"]
    assert [unquote(i) for i in pull["principals"][0]["identifiers"]] == ["lambda.amazonaws.com"]
    assert {unquote(a) for a in pull["actions"]} == {"ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"}
    (source,) = pull["condition"]
    assert unquote(source["values"][0]).endswith(":function:${local.function_name}*")
