"""The infrastructure templates declare exactly what the app uses: shared/names.py is the source.

Parses infra/bicep/main.bicep (pycep) and infra/terraform/{azure,aws} (python-hcl2) and fails when

* a container, table or queue of shared.names is missing from any of the three template sets
  (AWS: the containers are key prefixes in the one bucket, tables and queues carry a prefix);
* a template declares one the app does not use (besides Flex Consumption's deployment container);
* an app setting is one the app does not read: it must be in names.APP_SETTINGS or
  names.PLATFORM_SETTINGS, or be "<SETTING_QUEUE_CONNECTION>__*" / "<SETTING_HOST_STORAGE>__*";
* Bicep and Terraform (Azure) disagree on containers, tables, queues or app settings;
* the security and platform requirements drift (identity-only storage, exact roles, exact IAM
  actions, Flex Consumption, lifecycle of backups, DynamoDB keys and TTL, SQS dead-lettering).

The checks are functions returning a list of problems, so the last tests can prove that they do
fail on a broken template (an empty parse, a missing table, an unknown setting, a broader role).
Nothing here deploys anything: see docs/deploy.md for what was and was not validated.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
from pycep import BicepParser

from shared import names
from shared.config import Settings
from shared.stores import ANCHOR_BUCKET_CONTAINER

ROOT = Path(__file__).resolve().parent.parent
BICEP_FILE = ROOT / "infra" / "bicep" / "main.bicep"
TF_AZURE_DIR = ROOT / "infra" / "terraform" / "azure"
TF_AWS_DIR = ROOT / "infra" / "terraform" / "aws"

BICEP_CONTAINER = "Microsoft.Storage/storageAccounts/blobServices/containers"
BICEP_TABLE = "Microsoft.Storage/storageAccounts/tableServices/tables"
BICEP_QUEUE = "Microsoft.Storage/storageAccounts/queueServices/queues"
AZAPI_TABLE_PREFIX = BICEP_TABLE + "@"

# Built-in role definition ids (the same in every tenant).
STORAGE_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
}
METRICS_PUBLISHER = ("Monitoring Metrics Publisher", "3913510d-42f4-4e42-8a64-420c390055eb")

# IAM actions of the boto3 client methods the aws backend may call. The expected policy is derived
# from the calls in shared/backends/aws.py: a call missing here fails the test until it is mapped.
AWS_BACKEND_FILE = ROOT / "shared" / "backends" / "aws.py"
BOTO3_IAM: dict[str, dict[str, set[str]]] = {
    "s3": {
        "put_object": {"s3:PutObject"},
        "get_object": {"s3:GetObject"},
        "head_object": {"s3:GetObject"},
        "delete_object": {"s3:DeleteObject"},
        "copy_object": {"s3:GetObject", "s3:PutObject"},
        "list_objects_v2": {"s3:ListBucket"},
        "head_bucket": {"s3:ListBucket"},
        # The audit anchor's write-once bucket (AwsObjectLockBackend).
        "list_object_versions": {"s3:ListBucketVersions"},
        "get_object_lock_configuration": {"s3:GetBucketObjectLockConfiguration"},
    },
    "dynamodb": {
        "get_item": {"dynamodb:GetItem"},
        "put_item": {"dynamodb:PutItem"},
        "update_item": {"dynamodb:UpdateItem"},
        "delete_item": {"dynamodb:DeleteItem"},
        "query": {"dynamodb:Query"},
        "scan": {"dynamodb:Scan"},
        "batch_get_item": {"dynamodb:BatchGetItem"},
        "batch_write_item": {"dynamodb:BatchWriteItem"},
        "transact_get_items": {"dynamodb:GetItem"},
        "transact_write_items": set(),  # per item: see TRANSACT_ITEM_ACTIONS
        "describe_table": {"dynamodb:DescribeTable"},
        "get_waiter": {"dynamodb:DescribeTable"},  # table_exists polls DescribeTable
        "list_tables": {"dynamodb:ListTables"},
    },
    "sqs": {
        "send_message": {"sqs:SendMessage"},
        "send_message_batch": {"sqs:SendMessage"},
        "receive_message": {"sqs:ReceiveMessage"},
        "delete_message": {"sqs:DeleteMessage"},
        "delete_message_batch": {"sqs:DeleteMessage"},
        "change_message_visibility": {"sqs:ChangeMessageVisibility"},
        "get_queue_attributes": {"sqs:GetQueueAttributes"},
        "get_queue_url": {"sqs:GetQueueUrl"},
        "list_queues": {"sqs:ListQueues"},
    },
}
# The templates provision these; the backend calls them only when a resource is missing, so the
# least-privilege policy leaves them out.
PROVISIONING_METHODS = {"create_bucket", "create_table", "create_queue"}
CLIENT_ATTRIBUTES = {"close", "meta", "exceptions"}
TRANSACT_ITEM_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Delete": "dynamodb:DeleteItem",
    "Update": "dynamodb:UpdateItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}
# Account-level actions that cannot be scoped to a resource: the only ones allowed on "*".
ACCOUNT_LEVEL_ACTIONS = {"dynamodb:ListTables", "sqs:ListQueues"}
CLIENT_SERVICE = {"s3": "s3", "ddb": "dynamodb", "dynamodb": "dynamodb", "sqs": "sqs"}


def aws_backend_actions(source: str) -> tuple[set[str], list[str]]:
    """The IAM actions the backend's boto3 calls need, and the calls no mapping covers."""
    actions: set[str] = set()
    unmapped: list[str] = []
    for client, method in re.findall(r"\._(s3|ddb|dynamodb|sqs)\.([a-z_0-9]+)", source):
        service = CLIENT_SERVICE[client]
        if method in PROVISIONING_METHODS or method in CLIENT_ATTRIBUTES:
            continue
        if method not in BOTO3_IAM[service]:
            unmapped.append(f"{service}.{method}")
            continue
        actions |= BOTO3_IAM[service][method]
    if re.search(r"\._(?:ddb|dynamodb)\.transact_write_items", source):
        for item in set(re.findall(r'\{"(Put|Delete|Update|ConditionCheck)":', source)):
            actions.add(TRANSACT_ITEM_ACTIONS[item])
    return actions, unmapped


# azurerm turns these site_config arguments into app settings of these names.
TF_SITE_CONFIG_SETTINGS = {
    "application_insights_connection_string": "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "application_insights_key": "APPINSIGHTS_INSTRUMENTATIONKEY",
}
# azurerm_function_app_flex_consumption injects an AzureWebJobsStorage connection string built
# from an empty key unless app_settings sets it to "" (terraform-provider-azurerm#29149): allowed
# in Terraform only, and only empty.
TF_HOST_STORAGE_WORKAROUND = names.SETTING_HOST_STORAGE

# Settings the Azure templates must set, with the value when it is a constant.
REQUIRED_AZURE_SETTINGS: dict[str, str | None] = {
    names.SETTING_BACKEND: "azure",
    names.SETTING_AZURE_ACCOUNT_NAME: None,
    names.SETTING_AZURE_CLIENT_ID: None,
    f"{names.SETTING_QUEUE_CONNECTION}__queueServiceUri": None,
    f"{names.SETTING_QUEUE_CONNECTION}__credential": "managedidentity",
    f"{names.SETTING_QUEUE_CONNECTION}__clientId": None,
    f"{names.SETTING_HOST_STORAGE}__accountName": None,
    f"{names.SETTING_HOST_STORAGE}__blobServiceUri": None,
    f"{names.SETTING_HOST_STORAGE}__queueServiceUri": None,
    f"{names.SETTING_HOST_STORAGE}__tableServiceUri": None,
    f"{names.SETTING_HOST_STORAGE}__credential": "managedidentity",
    f"{names.SETTING_HOST_STORAGE}__clientId": None,
    "APPLICATIONINSIGHTS_CONNECTION_STRING": None,
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": None,
}

# Settings the app reads that hold connection strings: fine locally, never in the templates.
CONNECTION_STRING_SETTINGS = {names.SETTING_AZURE_CONNECTION_STRING, names.SETTING_QUEUE_CONNECTION}

# Anything that smells of a storage key or connection string.
SECRET_PATTERNS = re.compile(r"AccountKey|listKeys|primary_access_key|primary_connection_string|SharedAccessSignature")


# ---- parsing -----------------------------------------------------------------------------


@functools.cache
def _bicep_text() -> str:
    return BICEP_FILE.read_text(encoding="utf-8")


def parse_bicep(text: str) -> dict[str, Any]:
    return BicepParser().parse(text=text)


@functools.cache
def bicep() -> dict[str, Any]:
    return parse_bicep(_bicep_text())


@functools.cache
def _tf_texts(directory: Path) -> tuple[tuple[str, str], ...]:
    return tuple((p.name, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.tf")))


def parse_tf(texts: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> dict[str, Any]:
    """Merge the .tf files of one directory into resources, data, locals, variables, outputs."""
    options = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)
    merged: dict[str, Any] = {"resource": [], "data": [], "locals": {}, "variable": {}, "output": {}}
    for _name, text in texts:
        document = hcl2.loads(text, serialization_options=options)
        for kind in ("resource", "data"):
            for block in document.get(kind, []):
                for rtype, by_name in block.items():
                    for rname, conf in by_name.items():
                        merged[kind].append((rtype, rname, conf))
        for block in document.get("locals", []):
            merged["locals"].update({k: v for k, v in block.items() if not k.startswith("__")})
        for kind in ("variable", "output"):
            for block in document.get(kind, []):
                merged[kind].update(block)
    return merged


@functools.cache
def tf_azure() -> dict[str, Any]:
    return parse_tf(_tf_texts(TF_AZURE_DIR))


@functools.cache
def tf_aws() -> dict[str, Any]:
    return parse_tf(_tf_texts(TF_AWS_DIR))


# ---- Bicep helpers -----------------------------------------------------------------------


def _bicep_body(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource body, under any loop or condition wrapper."""
    config = resource["config"]
    while isinstance(config, dict) and "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return config


def _bicep_loop(resource: dict[str, Any]) -> dict[str, str] | None:
    loop = resource["config"].get("loop_type") if isinstance(resource["config"], dict) else None
    return loop["detail"] if loop and loop.get("type") == "array" else None


def _bicep_var(doc: dict[str, Any], name: str) -> Any:
    return doc["variables"][name]["value"]


def bicep_resources(doc: dict[str, Any], rtype: str) -> list[tuple[str, dict[str, Any]]]:
    return [(key, res) for key, res in doc["resources"].items() if res["type"] == rtype]


def bicep_names(doc: dict[str, Any], rtype: str) -> set[str]:
    """Every name declared for one resource type, through loops over literal array variables."""
    declared: set[str] = set()
    for key, res in bicep_resources(doc, rtype):
        name = _bicep_body(res)["name"]
        loop = _bicep_loop(res)
        if loop and name == loop["item_name"]:
            values = _bicep_var(doc, loop["array_name"])
        elif isinstance(name, str) and name in doc["variables"]:
            values = [_bicep_var(doc, name)]
        elif isinstance(name, str) and "${" not in name:
            values = [name]
        else:
            raise AssertionError(f"cannot resolve the name of Bicep resource {key!r}: {name!r}")
        if not all(isinstance(v, str) for v in values):
            raise AssertionError(f"Bicep resource {key!r} loops over non-literal names: {values!r}")
        declared.update(values)
    return declared


def _bicep_function_app(doc: dict[str, Any]) -> dict[str, Any]:
    sites = bicep_resources(doc, "Microsoft.Web/sites")
    assert len(sites) == 1, f"expected one Microsoft.Web/sites, found {[k for k, _ in sites]}"
    return _bicep_body(sites[0][1])


def bicep_app_settings(doc: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    site = _bicep_function_app(doc)
    for entry in site["properties"]["siteConfig"].get("appSettings", []):
        settings[entry["name"]] = entry["value"]
    # App settings may also be declared as a Microsoft.Web/sites/config "appsettings" resource.
    for _key, res in bicep_resources(doc, "Microsoft.Web/sites/config"):
        body = _bicep_body(res)
        if body["name"] == "appsettings":
            settings.update(body["properties"])
    return settings


def _interpolate(text: str, variables: dict[str, Any]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: str(variables.get(m.group(1), m.group(0))), text)


# ---- Terraform helpers -------------------------------------------------------------------


def tf_resources(doc: dict[str, Any], rtype: str) -> list[tuple[str, dict[str, Any]]]:
    return [(rname, conf) for t, rname, conf in doc["resource"] if t == rtype]


def _tf_local_ref(expression: Any) -> str | None:
    """ "${toset(local.x)}" / "${local.x}" -> "x"."""
    if not isinstance(expression, str):
        return None
    match = re.fullmatch(r"\$\{(?:toset\()?local\.(\w+)\)?\}", expression)
    return match.group(1) if match else None


def tf_names(
    doc: dict[str, Any], resources: list[tuple[str, dict[str, Any]]], *, name_template: str = "${each.value}"
) -> set[str]:
    """Names declared by resources whose name is a literal, a local, or name_template over a for_each local."""
    declared: set[str] = set()
    for rname, conf in resources:
        name = conf.get("name")
        if "for_each" in conf:
            local = _tf_local_ref(conf["for_each"])
            if local is None or name != name_template:
                raise AssertionError(f"cannot resolve names of {rname!r}: for_each={conf['for_each']!r} name={name!r}")
            values = doc["locals"][local]
        elif _tf_local_ref(name):
            values = [doc["locals"][_tf_local_ref(name)]]
        elif isinstance(name, str) and "${" not in name:
            values = [name]
        else:
            raise AssertionError(f"cannot resolve the name of {rname!r}: {name!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise AssertionError(f"{rname!r} declares non-literal names: {values!r}")
        declared.update(values)
    return declared


def _tf_function_app(doc: dict[str, Any]) -> dict[str, Any]:
    apps = tf_resources(doc, "azurerm_function_app_flex_consumption")
    assert len(apps) == 1, f"expected one azurerm_function_app_flex_consumption, found {len(apps)}"
    return apps[0][1]


def _block(conf: dict[str, Any], name: str) -> dict[str, Any]:
    value = conf.get(name)
    if isinstance(value, list):
        assert len(value) == 1, f"expected one {name} block"
        return value[0]
    assert isinstance(value, dict), f"missing {name} block"
    return value


def tf_azure_app_settings(doc: dict[str, Any]) -> dict[str, Any]:
    app = _tf_function_app(doc)
    settings = dict(app.get("app_settings", {}))
    site_config = _block(app, "site_config")
    for argument, setting in TF_SITE_CONFIG_SETTINGS.items():
        if argument in site_config:
            settings[setting] = site_config[argument]
    return settings


def _tf_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    return None


def _tf_var_default(doc: dict[str, Any], name: str) -> Any:
    return doc["variable"][name].get("default")


# ---- the checks (each returns a list of problems) ----------------------------------------


def check_parsed(doc: dict[str, Any], minimum: int, what: str) -> list[str]:
    count = len(doc["resources"]) if isinstance(doc.get("resources"), dict) else len(doc.get("resource", []))
    return [] if count >= minimum else [f"{what}: parsed only {count} resources (expected at least {minimum})"]


def check_names(
    declared: set[str], expected: set[str], what: str, *, extra_allowed: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    problems = []
    if missing := expected - declared:
        problems.append(f"{what}: missing {sorted(missing)}")
    if unknown := declared - expected - set(extra_allowed):
        problems.append(f"{what}: declares names the app does not use {sorted(unknown)}")
    return problems


def setting_allowed(name: str) -> bool:
    return (
        name in names.APP_SETTINGS
        or name in names.PLATFORM_SETTINGS
        or name.startswith(f"{names.SETTING_QUEUE_CONNECTION}__")
        or name.startswith(f"{names.SETTING_HOST_STORAGE}__")
    )


def check_settings(settings: dict[str, Any], what: str, *, terraform: bool) -> list[str]:
    problems = []
    for name, value in settings.items():
        if terraform and name == TF_HOST_STORAGE_WORKAROUND:
            if value != "":
                problems.append(f"{what}: {name} may only be set to an empty value (identity-based host storage)")
            continue
        if name in CONNECTION_STRING_SETTINGS:
            problems.append(f"{what}: {name} holds a connection string; use the identity-based settings")
        elif not setting_allowed(name):
            problems.append(f"{what}: app setting {name!r} is not one the app reads (shared/names.py)")
        if SECRET_PATTERNS.search(str(value)):
            problems.append(f"{what}: app setting {name!r} carries a key or connection string: {value!r}")
    for name, constant in REQUIRED_AZURE_SETTINGS.items():
        if name not in settings:
            problems.append(f"{what}: missing app setting {name}")
        elif constant is not None and settings[name] != constant:
            problems.append(f"{what}: {name} must be {constant!r}, is {settings[name]!r}")
    return problems


def check_no_secrets(text: str, what: str) -> list[str]:
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("//", "#")))
    return [f"{what}: refers to storage keys or connection strings ({m})" for m in set(SECRET_PATTERNS.findall(code))]


def bicep_declared(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {
        "containers": bicep_names(doc, BICEP_CONTAINER),
        "tables": bicep_names(doc, BICEP_TABLE),
        "queues": bicep_names(doc, BICEP_QUEUE),
        "settings": set(bicep_app_settings(doc)),
    }


def tf_azure_declared(doc: dict[str, Any]) -> dict[str, set[str]]:
    tables = [
        (rname, conf)
        for rname, conf in tf_resources(doc, "azapi_resource")
        if str(conf.get("type", "")).startswith(AZAPI_TABLE_PREFIX)
    ] + tf_resources(doc, "azurerm_storage_table")
    return {
        "containers": tf_names(doc, tf_resources(doc, "azurerm_storage_container")),
        "tables": tf_names(doc, tables),
        "queues": tf_names(doc, tf_resources(doc, "azurerm_storage_queue")),
        "settings": set(tf_azure_app_settings(doc)) - {TF_HOST_STORAGE_WORKAROUND},
    }


BICEP_IMMUTABILITY = BICEP_CONTAINER + "/immutabilityPolicies"


def check_azure_anchor(reference: str, settings: dict[str, Any], what: str) -> list[str]:
    """The app is pointed at the audit anchor container the template declares (``reference``: its name's variable)."""
    value = settings.get(names.SETTING_AUDIT_ANCHOR)
    if value != f"container:${{{reference}}}":
        return [f"{what}: {names.SETTING_AUDIT_ANCHOR} must be 'container:${{{reference}}}', is {value!r}"]
    return []


def check_bicep(doc: dict[str, Any]) -> list[str]:
    problems = check_parsed(doc, 15, "bicep")
    if problems:
        return problems
    declared = bicep_declared(doc)
    deployment = _bicep_var(doc, "deploymentContainerName")
    anchor = _bicep_var(doc, "auditAnchorContainerName")
    problems += check_names(
        declared["containers"], set(names.CONTAINERS), "bicep containers", extra_allowed={deployment, anchor}
    )
    problems += check_azure_anchor("auditAnchorContainerName", bicep_app_settings(doc), "bicep")
    policies = [_bicep_body(res) for _, res in bicep_resources(doc, BICEP_IMMUTABILITY)]
    if not any(p.get("parent") == "auditAnchorContainer" and p["properties"].get("allowProtectedAppendWrites") is False
               and p["properties"].get("immutabilityPeriodSinceCreationInDays") for p in policies):
        problems.append("bicep: the audit anchor container needs a time-based immutability policy (no appends)")
    problems += check_names(declared["tables"], set(names.TABLES), "bicep tables")
    problems += check_names(declared["queues"], set(names.QUEUES), "bicep queues")
    problems += check_settings(bicep_app_settings(doc), "bicep", terraform=False)
    return problems


def check_tf_azure(doc: dict[str, Any]) -> list[str]:
    problems = check_parsed(doc, 15, "terraform/azure")
    if problems:
        return problems
    declared = tf_azure_declared(doc)
    deployment = doc["locals"]["deployment_container"]
    anchor = doc["locals"]["audit_anchor_container"]
    problems += check_names(
        declared["containers"], set(names.CONTAINERS), "terraform/azure containers", extra_allowed={deployment, anchor}
    )
    problems += check_azure_anchor("local.audit_anchor_container", tf_azure_app_settings(doc), "terraform/azure")
    policies = [conf for _, conf in tf_resources(doc, "azurerm_storage_container_immutability_policy")]
    if not any(p.get("storage_container_resource_manager_id") == "${azurerm_storage_container.audit_anchor.id}"
               and _tf_bool(p.get("protected_append_writes_enabled")) is False and p.get("immutability_period_in_days")
               for p in policies):
        problems.append("terraform/azure: the audit anchor container needs a time-based immutability policy")
    problems += check_names(declared["tables"], set(names.TABLES), "terraform/azure tables")
    problems += check_names(declared["queues"], set(names.QUEUES), "terraform/azure queues")
    problems += check_settings(tf_azure_app_settings(doc), "terraform/azure", terraform=True)
    return problems


def check_azure_equivalent(bicep_doc: dict[str, Any], tf_doc: dict[str, Any]) -> list[str]:
    b, t = bicep_declared(bicep_doc), tf_azure_declared(tf_doc)
    return [
        f"bicep and terraform/azure declare different {kind}: only bicep {sorted(b[kind] - t[kind])}, "
        f"only terraform {sorted(t[kind] - b[kind])}"
        for kind in b
        if b[kind] != t[kind]
    ]


def check_azure_roles(bicep_doc: dict[str, Any], tf_doc: dict[str, Any]) -> list[str]:
    problems = []
    # Bicep: role assignments loop over literal role ids, or name one directly.
    bicep_ids: list[str] = []
    for key, res in bicep_resources(bicep_doc, "Microsoft.Authorization/roleAssignments"):
        loop = _bicep_loop(res)
        role = _bicep_body(res)["properties"]["roleDefinitionId"]
        resource_name = role["function"]["parameters"]["resource_name_1"] if isinstance(role, dict) else role
        if loop and resource_name == loop["item_name"]:
            bicep_ids += _bicep_var(bicep_doc, loop["array_name"])
        elif resource_name in bicep_doc["variables"]:
            bicep_ids.append(_bicep_var(bicep_doc, resource_name))
        else:
            problems.append(f"bicep: cannot resolve the role of {key!r}")
    expected_ids = sorted([*STORAGE_ROLES.values(), METRICS_PUBLISHER[1]])
    if sorted(bicep_ids) != expected_ids:
        problems.append(f"bicep: role assignments {sorted(bicep_ids)} != exactly {expected_ids}")
    # Terraform: role_definition_name, literal or over a for_each local.
    tf_roles: list[str] = []
    for rname, conf in tf_resources(tf_doc, "azurerm_role_assignment"):
        if "role_definition_id" in conf:
            problems.append(f"terraform/azure: {rname} uses role_definition_id; use the built-in role name")
            continue
        role = conf.get("role_definition_name")
        local = _tf_local_ref(conf.get("for_each"))
        if local and role == "${each.value}":
            value = tf_doc["locals"][local]
            match = re.fullmatch(r"\$\{toset\(\[(.*)\]\)\}", value) if isinstance(value, str) else None
            tf_roles += re.findall(r'"([^"]+)"', match.group(1)) if match else list(value)
        elif isinstance(role, str) and "${" not in role:
            tf_roles.append(role)
        else:
            problems.append(f"terraform/azure: cannot resolve the role of {rname!r}")
    expected_names = sorted([*STORAGE_ROLES, METRICS_PUBLISHER[0]])
    if sorted(tf_roles) != expected_names:
        problems.append(f"terraform/azure: role assignments {sorted(tf_roles)} != exactly {expected_names}")
    return problems


def _aws_policy(doc: dict[str, Any]) -> list[dict[str, Any]]:
    documents = [conf for t, rname, conf in doc["data"] if t == "aws_iam_policy_document" and rname == "app"]
    assert len(documents) == 1, "expected data.aws_iam_policy_document.app"
    return documents[0]["statement"]


AWS_ANCHOR_BUCKET = "audit_anchor"


def check_aws_anchor(doc: dict[str, Any], anchor: dict[str, Any] | None) -> list[str]:
    """The audit anchor bucket: Object Lock on, a COMPLIANCE default retention, the app pointed at it."""
    if anchor is None:
        return [f"terraform/aws: no aws_s3_bucket.{AWS_ANCHOR_BUCKET} (the audit log's Object Lock anchor)"]
    problems = []
    if _tf_bool(anchor.get("object_lock_enabled")) is not True:
        problems.append("terraform/aws: the audit anchor bucket must have object_lock_enabled = true")
    locks = dict(tf_resources(doc, "aws_s3_bucket_object_lock_configuration"))
    lock = locks.get(AWS_ANCHOR_BUCKET)
    retention = _block(_block(lock, "rule"), "default_retention") if lock else {}
    if retention.get("mode") != "COMPLIANCE" or not retention.get("days"):
        problems.append("terraform/aws: the audit anchor needs a default retention in COMPLIANCE mode, in days")
    if doc["locals"].get("anchor_container") != ANCHOR_BUCKET_CONTAINER:
        problems.append(f"terraform/aws: local.anchor_container must be {ANCHOR_BUCKET_CONTAINER!r} (shared/stores.py)")
    setting = doc["output"].get("app_settings", {}).get("value", {}).get(names.SETTING_AUDIT_ANCHOR)
    if setting != "s3://${aws_s3_bucket.audit_anchor.id}":
        problems.append(f"terraform/aws: app_settings must set {names.SETTING_AUDIT_ANCHOR} to the anchor bucket")
    return problems


def check_aws(doc: dict[str, Any], backend_source: str | None = None) -> list[str]:
    problems = check_parsed(doc, 10, "terraform/aws")
    if problems:
        return problems
    local = doc["locals"]
    defaults = Settings()
    if backend_source is None:
        backend_source = AWS_BACKEND_FILE.read_text(encoding="utf-8")

    # S3: one data bucket; the containers are the first key segment, used in the IAM policy.
    buckets = dict(tf_resources(doc, "aws_s3_bucket"))
    anchor = buckets.pop(AWS_ANCHOR_BUCKET, None)
    if len(buckets) != 1:
        problems.append(f"terraform/aws: expected exactly one S3 data bucket, found {len(buckets)}")
    problems += check_aws_anchor(doc, anchor)
    problems += check_names(
        set(local.get("containers", [])), set(names.CONTAINERS), "terraform/aws containers (key prefixes)"
    )

    # DynamoDB: one table per logical table, "<table_prefix><name>".
    tables = tf_resources(doc, "aws_dynamodb_table")
    problems += check_names(
        tf_names(doc, tables, name_template="${var.table_prefix}${each.value}"),
        set(names.TABLES),
        "terraform/aws tables",
    )
    if _tf_var_default(doc, "table_prefix") != defaults.aws_table_prefix:
        problems.append(f"terraform/aws: table_prefix default must be the app's {defaults.aws_table_prefix!r}")

    # SQS: work queues "<queue_prefix><name>", each with "<queue_prefix><name>-poison".
    queues = dict(tf_resources(doc, "aws_sqs_queue"))
    work = (
        tf_names(doc, [("app", queues["app"])], name_template="${var.queue_prefix}${each.value}")
        if "app" in queues
        else set()
    )
    poison = (
        {
            n + names.POISON_SUFFIX
            for n in tf_names(
                doc,
                [("poison", queues["poison"])],
                name_template="${var.queue_prefix}${each.value}" + names.POISON_SUFFIX,
            )
        }
        if "poison" in queues
        else set()
    )
    problems += check_names(work | poison, set(names.QUEUES), "terraform/aws queues (with -poison dead-letter queues)")
    if work & {q for q in names.QUEUES if q.endswith(names.POISON_SUFFIX)}:
        problems.append("terraform/aws: a poison queue is declared as a work queue")
    if _tf_var_default(doc, "queue_prefix") != defaults.aws_queue_prefix:
        problems.append(f"terraform/aws: queue_prefix default must be the app's {defaults.aws_queue_prefix!r}")

    # IAM: exactly the actions of the backend's calls; "*" only for account-level list actions.
    expected, unmapped = aws_backend_actions(backend_source)
    if unmapped:
        problems.append(f"tests/test_infra.py: map these boto3 calls of the aws backend to IAM actions: {unmapped}")
    actions: set[str] = set()
    for statement in _aws_policy(doc):
        granted = set(statement["actions"])
        actions |= granted
        if statement.get("effect", "Allow") != "Allow":
            problems.append(f"terraform/aws: app policy statement {statement.get('sid')} is not Allow")
        resources = statement["resources"]
        for resource in resources if isinstance(resources, list) else [resources]:
            wildcard = resource == "*" or re.search(r'(^|[:"])\*$', str(resource))
            if wildcard and not granted <= ACCOUNT_LEVEL_ACTIONS:
                problems.append(
                    f"terraform/aws: statement {statement.get('sid')} grants on a wildcard resource {resource!r}"
                )
    if actions != expected:
        problems.append(
            f"terraform/aws: IAM actions differ from the backend's calls: extra {sorted(actions - expected)}, "
            f"missing {sorted(expected - actions)}"
        )

    # The settings the outputs hand to the app are ones it reads.
    output_settings = doc["output"].get("app_settings", {}).get("value", {})
    if not output_settings:
        problems.append("terraform/aws: no app_settings output")
    for name in output_settings:
        if name not in names.APP_SETTINGS:
            problems.append(f"terraform/aws: output app setting {name!r} is not one the app reads")
    return problems


# ---- the tests ---------------------------------------------------------------------------


def test_parsers_find_the_resources() -> None:
    """An empty or failed parse must not pass as 'nothing missing'."""
    assert check_parsed(bicep(), 15, "bicep") == []
    assert check_parsed(tf_azure(), 15, "terraform/azure") == []
    assert check_parsed(tf_aws(), 10, "terraform/aws") == []
    assert bicep_names(bicep(), BICEP_TABLE), "no Bicep tables found"
    assert tf_resources(tf_aws(), "aws_dynamodb_table"), "no DynamoDB tables found"


def test_bicep_declares_every_name_and_only_settings_the_app_reads() -> None:
    assert check_bicep(bicep()) == []


def test_terraform_azure_declares_every_name_and_only_settings_the_app_reads() -> None:
    assert check_tf_azure(tf_azure()) == []


def test_bicep_and_terraform_azure_are_equivalent() -> None:
    assert check_azure_equivalent(bicep(), tf_azure()) == []
    # Same Flex Consumption shape and tunables.
    site = _bicep_function_app(bicep())
    app = _tf_function_app(tf_azure())
    runtime = site["properties"]["functionAppConfig"]["runtime"]
    assert (runtime["name"], runtime["version"]) == (app["runtime_name"], app["runtime_version"]) == ("python", "3.11")
    assert bicep()["parameters"]["backupCoolAfterDays"]["default"] == _tf_var_default(
        tf_azure(), "backup_cool_after_days"
    )
    assert bicep()["parameters"]["backupRetentionDays"]["default"] == _tf_var_default(
        tf_azure(), "backup_retention_days"
    )
    assert bicep()["parameters"]["instanceMemoryMB"]["default"] == _tf_var_default(tf_azure(), "instance_memory_mb")
    assert bicep()["parameters"]["maximumInstanceCount"]["default"] == _tf_var_default(
        tf_azure(), "maximum_instance_count"
    )


def test_terraform_aws_declares_every_name_and_exact_permissions() -> None:
    assert check_aws(tf_aws()) == []


def test_identity_gets_exactly_the_data_roles() -> None:
    assert check_azure_roles(bicep(), tf_azure()) == []


def test_no_storage_keys_or_connection_strings() -> None:
    assert check_no_secrets(_bicep_text(), "bicep") == []
    for name, text in _tf_texts(TF_AZURE_DIR):
        assert check_no_secrets(text, f"terraform/azure/{name}") == []
    assert not _block(_tf_function_app(tf_azure()), "site_config").get("application_insights_key")
    assert "connection_string" not in _tf_function_app(tf_azure())
    assert "connectionStrings" not in _bicep_function_app(bicep())["properties"]["siteConfig"]


def test_bicep_storage_is_locked_down() -> None:
    doc = bicep()
    ((_, storage),) = bicep_resources(doc, "Microsoft.Storage/storageAccounts")
    props = _bicep_body(storage)["properties"]
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False
    assert props["allowSharedKeyAccess"] is False
    ((_, blob_service),) = bicep_resources(doc, "Microsoft.Storage/storageAccounts/blobServices")
    blob = _bicep_body(blob_service)["properties"]
    assert blob["isVersioningEnabled"] is True
    assert blob["deleteRetentionPolicy"]["enabled"] is True
    for _key, container in bicep_resources(doc, BICEP_CONTAINER):
        assert _bicep_body(container)["properties"]["publicAccess"] == "None"


def test_terraform_azure_storage_is_locked_down() -> None:
    ((_, storage),) = tf_resources(tf_azure(), "azurerm_storage_account")
    assert _tf_bool(storage["https_traffic_only_enabled"]) is True
    assert storage["min_tls_version"] == "TLS1_2"
    assert _tf_bool(storage["allow_nested_items_to_be_public"]) is False
    assert _tf_bool(storage["shared_access_key_enabled"]) is False
    blob = _block(storage, "blob_properties")
    assert _tf_bool(blob["versioning_enabled"]) is True
    assert _block(blob, "delete_retention_policy")["days"] == "${var.soft_delete_retention_days}"
    for _name, container in tf_resources(tf_azure(), "azurerm_storage_container"):
        assert container["container_access_type"] == "private"


def test_flex_consumption_with_user_assigned_identity() -> None:
    doc = bicep()
    ((_, plan),) = bicep_resources(doc, "Microsoft.Web/serverfarms")
    assert _bicep_body(plan)["sku"]["name"] == "FC1"
    site = _bicep_function_app(doc)
    assert site["identity"]["type"] == "UserAssigned"
    config = site["properties"]["functionAppConfig"]
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    deployment = _bicep_var(doc, "deploymentContainerName")
    assert config["deployment"]["storage"]["value"].endswith("${deploymentContainerName}")
    assert deployment in bicep_names(doc, BICEP_CONTAINER)
    assert config["scaleAndConcurrency"] == {
        "instanceMemoryMB": "instanceMemoryMB",
        "maximumInstanceCount": "maximumInstanceCount",
    }
    memory = {d["type"]: d["argument"] for d in doc["parameters"]["instanceMemoryMB"]["decorators"]}
    assert memory["allowed"] == [2048, 4096]

    tf = tf_azure()
    ((_, tf_plan),) = tf_resources(tf, "azurerm_service_plan")
    assert tf_plan["sku_name"] == "FC1"
    app = _tf_function_app(tf)
    assert _block(app, "identity")["type"] == "UserAssigned"
    assert app["storage_authentication_type"] == "UserAssignedIdentity"
    assert app["storage_container_endpoint"].endswith("${azurerm_storage_container.deployment.name}")
    assert app["instance_memory_in_mb"] == "${var.instance_memory_mb}"
    assert app["maximum_instance_count"] == "${var.maximum_instance_count}"


def test_backups_cool_then_expire() -> None:
    doc = bicep()
    ((_, policy),) = bicep_resources(doc, "Microsoft.Storage/storageAccounts/managementPolicies")
    rules = _bicep_body(policy)["properties"]["policy"]["rules"]
    variables = {k: v["value"] for k, v in doc["variables"].items()}
    backup_rules = [
        r
        for r in rules
        if f"{names.CONTAINER_BACKUPS}/"
        in [_interpolate(p, variables) for p in r["definition"]["filters"]["prefixMatch"]]
    ]
    assert len(backup_rules) == 1, "no lifecycle rule for the backup container"
    base = backup_rules[0]["definition"]["actions"]["baseBlob"]
    assert base["tierToCool"]["daysAfterModificationGreaterThan"] == "backupCoolAfterDays"
    assert base["delete"]["daysAfterModificationGreaterThan"] == "backupRetentionDays"

    tf = tf_azure()
    ((_, tf_policy),) = tf_resources(tf, "azurerm_storage_management_policy")
    tf_rules = tf_policy["rule"]
    tf_backup = [r for r in tf_rules if _block(r, "filters")["prefix_match"] == ["${local.backup_container}/"]]
    assert len(tf_backup) == 1 and tf["locals"]["backup_container"] == names.CONTAINER_BACKUPS
    tf_base = _block(_block(tf_backup[0], "actions"), "base_blob")
    assert tf_base["tier_to_cool_after_days_since_modification_greater_than"] == "${var.backup_cool_after_days}"
    assert tf_base["delete_after_days_since_modification_greater_than"] == "${var.backup_retention_days}"

    aws = tf_aws()
    lifecycle = dict(tf_resources(aws, "aws_s3_bucket_lifecycle_configuration"))["data"]
    aws_backup = [r for r in lifecycle["rule"] if _block(r, "filter").get("prefix") == "${local.backup_container}/"]
    assert len(aws_backup) == 1 and aws["locals"]["backup_container"] == names.CONTAINER_BACKUPS
    assert _block(aws_backup[0], "transition")["storage_class"] == "STANDARD_IA"
    assert _block(aws_backup[0], "expiration")["days"] == "${var.backup_retention_days}"


def test_application_insights_uses_entra_id_only() -> None:
    ((_, insights),) = bicep_resources(bicep(), "Microsoft.Insights/components")
    assert _bicep_body(insights)["properties"]["DisableLocalAuth"] is True
    assert "WorkspaceResourceId" in _bicep_body(insights)["properties"]
    ((_, tf_insights),) = tf_resources(tf_azure(), "azurerm_application_insights")
    assert _tf_bool(tf_insights["local_authentication_disabled"]) is True
    assert "workspace_id" in tf_insights
    for settings in (bicep_app_settings(bicep()), tf_azure_app_settings(tf_azure())):
        assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]


def test_outputs_name_what_the_app_settings_need() -> None:
    assert {"functionAppUrl", "functionAppName", "storageAccountName", "identityClientId", "queueServiceUri"} <= set(
        bicep()["outputs"]
    )
    assert {
        "function_app_url",
        "function_app_name",
        "storage_account_name",
        "identity_client_id",
        "queue_service_uri",
    } <= set(tf_azure()["output"])
    assert {"app_settings", "bucket_name", "policy_arn"} <= set(tf_aws()["output"])


def test_aws_tables_and_queues_match_the_backend() -> None:
    doc = tf_aws()
    ((_, table),) = tf_resources(doc, "aws_dynamodb_table")
    assert table["billing_mode"] == "PAY_PER_REQUEST"
    assert (table["hash_key"], table["range_key"]) == ("pk", "rk")
    assert sorted((a["name"], a["type"]) for a in table["attribute"]) == [("pk", "S"), ("rk", "S")]
    assert _tf_bool(_block(table, "point_in_time_recovery")["enabled"]) is True
    ttl = _block(table, "ttl")
    assert ttl["attribute_name"] == "expires_at" and _tf_bool(ttl["enabled"]) is True

    queues = dict(tf_resources(doc, "aws_sqs_queue"))
    assert doc["locals"]["max_message_size"] == 262144
    for queue in queues.values():
        assert queue["max_message_size"] == "${local.max_message_size}"
    redrive = queues["app"]["redrive_policy"]
    assert "aws_sqs_queue.poison[each.key].arn" in redrive
    assert "maxReceiveCount = local.max_receive_count" in redrive
    assert doc["locals"]["max_receive_count"] == 5

    # The data bucket and the audit anchor bucket alike.
    versionings = tf_resources(doc, "aws_s3_bucket_versioning")
    blocks = tf_resources(doc, "aws_s3_bucket_public_access_block")
    assert sorted(name for name, _ in versionings) == sorted(name for name, _ in blocks) == ["audit_anchor", "data"]
    for _, versioning in versionings:
        assert _block(versioning, "versioning_configuration")["status"] == "Enabled"
    for _, block in blocks:
        assert all(
            _tf_bool(block[k])
            for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        )
    assert len(tf_resources(doc, "aws_s3_bucket_server_side_encryption_configuration")) == 2


# ---- the checks can fail -----------------------------------------------------------------


def test_checks_fail_on_an_empty_parse() -> None:
    assert check_bicep(parse_bicep("param location string = 'x'\n")) != []
    assert check_tf_azure(parse_tf([("main.tf", 'variable "x" {}\n')])) != []
    assert check_aws(parse_tf([("main.tf", 'variable "x" {}\n')])) != []


def test_checks_fail_on_a_missing_table_or_queue() -> None:
    broken = _bicep_text().replace("'stowagecommands'", "'stowageother'")
    assert any("missing ['stowagecommands']" in p for p in check_bicep(parse_bicep(broken)))
    broken_tf = [(n, t.replace('"stowage-commands-poison",', "")) for n, t in _tf_texts(TF_AZURE_DIR)]
    assert any("missing ['stowage-commands-poison']" in p for p in check_tf_azure(parse_tf(broken_tf)))
    assert check_azure_equivalent(bicep(), parse_tf(broken_tf)) != []
    broken_aws = [(n, t.replace('"stowageapikeys",', "")) for n, t in _tf_texts(TF_AWS_DIR)]
    assert any("stowageapikeys" in p for p in check_aws(parse_tf(broken_aws)))


def test_checks_fail_on_a_setting_the_app_does_not_read() -> None:
    broken = _bicep_text().replace(
        "name: 'STOWAGE_BACKEND'",
        "name: 'STOWAGE_UNKNOWN'\n          value: 'x'\n        }\n        {\n          name: 'STOWAGE_BACKEND'",
    )
    assert any("'STOWAGE_UNKNOWN'" in p for p in check_bicep(parse_bicep(broken)))
    broken_tf = [
        (
            n,
            t.replace(
                'STOWAGE_BACKEND                 = "azure"',
                'STOWAGE_BACKEND = "azure"\n    AzureWebJobsStorage = "DefaultEndpointsProtocol=https;AccountKey=k"',
            ),
        )
        for n, t in _tf_texts(TF_AZURE_DIR)
    ]
    assert any(
        "AzureWebJobsStorage may only be set to an empty value" in p for p in check_tf_azure(parse_tf(broken_tf))
    )


def test_checks_fail_on_a_broader_role_or_action() -> None:
    broader = _bicep_text().replace(
        "'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner",
        "'17d1049b-9a84-46fb-8f53-869881c3d3ab' // Storage Account Contributor",
    )
    assert check_azure_roles(parse_bicep(broader), tf_azure()) != []
    wider = [
        (n, t.replace('"dynamodb:Scan",', '"dynamodb:Scan",\n      "dynamodb:*",')) for n, t in _tf_texts(TF_AWS_DIR)
    ]
    assert any("extra ['dynamodb:*']" in p for p in check_aws(parse_tf(wider)))


def test_aws_policy_follows_the_backend_calls() -> None:
    actions, unmapped = aws_backend_actions(AWS_BACKEND_FILE.read_text(encoding="utf-8"))
    assert unmapped == []
    # The scan found the backend's calls at all (an empty scan would make any policy look wrong).
    assert {"s3:GetObject", "s3:PutObject", "dynamodb:GetItem", "sqs:ReceiveMessage"} <= actions


def test_checks_fail_when_the_backend_calls_more_than_the_policy_grants() -> None:
    source = AWS_BACKEND_FILE.read_text(encoding="utf-8")
    more = source + "\nself._ddb.update_item(TableName=t)\nself._sqs.tag_queue(QueueUrl=u)\n"
    problems = check_aws(tf_aws(), more)
    assert any("missing ['dynamodb:UpdateItem']" in p for p in problems)
    assert any("['sqs.tag_queue']" in p for p in problems)
    wildcard = [
        (n, t.replace("resources = [aws_s3_bucket.data.arn]", 'resources = ["*"]')) for n, t in _tf_texts(TF_AWS_DIR)
    ]
    assert any("ListBucket grants on a wildcard resource" in p for p in check_aws(parse_tf(wildcard)))


@pytest.mark.parametrize(
    "name",
    [
        "STOWAGE_BACKEND",
        "STOWAGE_QUEUE_CONNECTION__clientId",
        "AzureWebJobsStorage__accountName",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
    ],
)
def test_setting_rule_accepts_what_the_app_and_platform_read(name: str) -> None:
    assert setting_allowed(name)


@pytest.mark.parametrize("name", ["AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME", "AWS_SECRET_ACCESS_KEY"])
def test_setting_rule_rejects_the_rest(name: str) -> None:
    assert not setting_allowed(name)


@pytest.mark.parametrize("name", sorted(CONNECTION_STRING_SETTINGS))
def test_connection_string_settings_are_refused_in_templates(name: str) -> None:
    problems = check_settings({name: "UseDevelopmentStorage=true"}, "t", terraform=False)
    assert f"t: {name} holds a connection string; use the identity-based settings" in problems


def test_checks_fail_when_the_audit_anchor_is_not_write_once() -> None:
    unlocked = [(n, t.replace("object_lock_enabled = true", "object_lock_enabled = false")
                 .replace('mode = "COMPLIANCE"', 'mode = "GOVERNANCE"')) for n, t in _tf_texts(TF_AWS_DIR)]
    problems = check_aws(parse_tf(unlocked))
    assert any("object_lock_enabled = true" in p for p in problems), problems
    assert any("COMPLIANCE" in p for p in problems), problems
    appendable = _bicep_text().replace("allowProtectedAppendWrites: false", "allowProtectedAppendWrites: true")
    assert any("immutability policy" in p for p in check_bicep(parse_bicep(appendable)))
    unprotected = [(n, t.replace("immutability_period_in_days           = var.audit_anchor_retention_days", ""))
                   for n, t in _tf_texts(TF_AZURE_DIR)]
    assert any("immutability policy" in p for p in check_tf_azure(parse_tf(unprotected)))
