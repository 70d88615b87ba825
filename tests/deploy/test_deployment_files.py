"""The compose file and Kubernetes manifests agree with the code: names, ports, health paths, env vars.

There is no Docker engine here, so this is what can be checked of them: they parse, every service of
seed 004 is there on its port, every environment variable they set is one the service really reads, the
worker runs the CLI's ``sonalyze worker``, every Deployment has two replicas or more and a
PodDisruptionBudget, and the autoscalers scale on metrics the code exports.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml
from pydantic_settings import BaseSettings

from sonalyze.cli import build_parser
from sonalyze.common.tasks import QUEUES
from sonalyze.gateway.metrics import GatewayMetrics
from sonalyze.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_CLASSES = {
    "gateway": "sonalyze.gateway.config:GatewaySettings",
    "lobby": "sonalyze.lobby.config:LobbySettings",
    "measurement": "sonalyze.measurement.settings:MeasurementSettings",
    "simulation": "sonalyze.simulation.config:SimulationSettings",
    "storage": "sonalyze.storage.settings:StorageSettings",
    "worker": "sonalyze.common.tasks:TaskQueueSettings",
}
READY_PATHS = {"gateway": "/readyz", "lobby": "/readyz", "measurement": "/readyz", "simulation": "/readyz", "storage": "/healthz"}
"""Readiness: the gateway's follows its broker, the others' their database (and task queue); storage's
``/healthz`` already checks its database."""
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
"""Read by boto3 (sonalyze.common.blobs: credentials from boto3's environment chain) where the blobs are in S3."""
# Read by `sonalyze serve` itself (cli.py, common/server.py, launcher.py) for every service.
PROCESS_ENV = {"HOST", "PORT", "LOG_LEVEL", "SERVICE_NAME"}


def settings_env_names(service: str) -> set[str]:
    module_name, class_name = SETTINGS_CLASSES[service].split(":")
    settings_class: type[BaseSettings] = getattr(importlib.import_module(module_name), class_name)
    prefix = settings_class.model_config.get("env_prefix", "") or ""
    names = set()
    for field_name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif alias is not None and hasattr(alias, "choices"):
            names.update(str(choice).upper() for choice in alias.choices if isinstance(choice, str))
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names | PROCESS_ENV


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    return {path.stem: [doc for doc in yaml.safe_load_all(path.read_text()) if doc] for path in (ROOT / "deploy/k8s").glob("*.yaml")}


def test_compose_has_every_service_of_seed_004_on_its_port(compose):
    services = compose["services"]
    assert set(SERVICES) | {"postgres", "redis", "worker"} == set(services)
    for name, spec in SERVICES.items():
        service = services[name]
        assert service["command"] == [name]
        assert service["environment"]["PORT"] == str(spec.default_port)
        health = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{spec.default_port}{READY_PATHS[name]}" in health


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_readiness_paths_are_served(name):
    """The readiness path is a route of the service (its source declares it)."""
    package = ROOT / "src/sonalyze" / name
    declared = "".join(path.read_text() for path in package.glob("*.py"))
    assert re.search(rf"\.get\(\s*\"{re.escape(READY_PATHS[name])}\"", declared), f"{name} serves no {READY_PATHS[name]}"


def worker_argv(entrypoint: list[str], command: list[str]) -> list[str]:
    assert entrypoint[0] == "sonalyze"
    return [*entrypoint[1:], *command]


def test_compose_workers_scale_and_run_the_cli_worker(compose):
    """``docker compose up --scale worker=N``: nothing fixed per container, the CLI's worker command, the
    services' task queue, and the blobs at the paths the services name (the task carries the path)."""
    services = compose["services"]
    for name, service in services.items():
        assert "container_name" not in service, name
    worker = services["worker"]
    assert "ports" not in worker and "expose" not in worker
    args = build_parser().parse_args(worker_argv(worker["entrypoint"], worker["command"]))
    assert args.command == "worker" and args.processes >= 1 and set(args.queues) == set(QUEUES)
    assert set(worker["environment"]) <= settings_env_names("worker")
    for name in ("measurement", "simulation"):
        environment = services[name]["environment"]
        assert environment["TASK_QUEUE_URL"] == worker["environment"]["TASK_QUEUE_URL"], name
        blob_path = environment["BLOB_URL"].removeprefix("file://")
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        worker_mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in worker["volumes"]}
        mount = next(path for path in mounts if blob_path.startswith(path + "/"))
        assert worker_mounts.get(mount) == mounts[mount], (name, mount)
    assert worker["environment"]["TASK_QUEUE_URL"].startswith("redis://redis:")


def test_compose_file_is_consistent(compose):
    """What ``docker compose config`` would refuse: unknown services, networks or volumes referenced, a
    service without image or build, a healthcheck without a test, a dependency on a service without one."""
    services, networks, volumes = compose["services"], set(compose["networks"]), set(compose["volumes"])
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        assert set(service.get("networks", [])) <= networks, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in volumes, (name, volume)
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                assert services[dependency]["healthcheck"]["test"], (name, dependency)
        assert service["healthcheck"]["test"], name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_environment_is_read_by_the_service(compose, name):
    environment = compose["services"][name]["environment"]
    unknown = set(environment) - settings_env_names(name)
    assert not unknown, f"{name} does not read {sorted(unknown)}"


def test_compose_urls_point_at_the_right_service_and_port(compose):
    for service in compose["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_URL") and str(value).startswith("http://"):
                target = key[: -len("_URL")].lower()
                assert value == f"http://{target}:{SERVICES[target].default_port}", (key, value)


def test_compose_internal_token_comes_from_env_file(compose):
    for name in SERVICES:
        assert compose["services"][name]["environment"]["INTERNAL_AUTH_TOKEN"].startswith("${INTERNAL_AUTH_TOKEN:?")
    assert compose["services"]["gateway"]["environment"]["DEVICE_TOKEN_SECRET"].startswith("${DEVICE_TOKEN_SECRET:?")
    env_example = (ROOT / ".env.example").read_text()
    assert "INTERNAL_AUTH_TOKEN=" in env_example and "DEVICE_TOKEN_SECRET=" in env_example


def test_compose_publishes_only_the_gateway(compose):
    """Issue 15: the services and PostgreSQL sit on an internal network with no published port."""
    published = {name for name, service in compose["services"].items() if service.get("ports") or service.get("expose")}
    assert published == {"gateway"}
    assert compose["services"]["gateway"]["ports"] == [f"{SERVICES['gateway'].default_port}:{SERVICES['gateway'].default_port}"]
    assert compose["networks"]["backend"]["internal"] is True
    for name, service in compose["services"].items():
        assert service.get("network_mode") is None, name
        expected = ["edge", "backend"] if name == "gateway" else ["backend"]
        assert service["networks"] == expected, name


def _policy_of(manifests: dict[str, list[dict]], name: str) -> dict:
    policies = [doc for doc in manifests[name] if doc["kind"] == "NetworkPolicy"]
    assert len(policies) == 1, name
    return policies[0]


# Who calls whom: the gateway routes to lobby/measurement/simulation, the lobby pushes to the gateway and
# drives the measurement, the measurement asks the lobby who may reach a job, three services write to storage.
CALLERS = {
    "gateway": {"lobby", "simulation"},
    "lobby": {"gateway", "measurement"},
    "measurement": {"gateway", "lobby"},
    "simulation": {"gateway"},
    "storage": {"lobby", "measurement", "simulation"},
}


def test_kubernetes_denies_by_default(manifests):
    deny = next(doc for doc in manifests["default-deny"] if doc["metadata"]["name"] == "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_kubernetes_network_policy_admits_only_the_callers(manifests, name):
    policy = _policy_of(manifests, name)["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": name}}
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    peers = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"] if "podSelector" in peer}
    assert peers == CALLERS[name]
    namespaces = [peer for peer in rule["from"] if "namespaceSelector" in peer]
    assert len(namespaces) == (1 if name == "gateway" else 0)  # the ingress controller reaches the gateway only
    assert rule["ports"] == [{"protocol": "TCP", "port": SERVICES[name].default_port}]


def test_kubernetes_ingress_serves_the_gateway_over_tls(manifests):
    ingress = next(doc for doc in manifests["gateway"] if doc["kind"] == "Ingress")["spec"]
    (tls,) = ingress["tls"]
    assert tls["secretName"] and tls["hosts"] == [ingress["rules"][0]["host"]]
    backends = [path["backend"]["service"] for rule in ingress["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "gateway", "port": {"number": SERVICES["gateway"].default_port}}]
    ingresses = [doc for docs in manifests.values() for doc in docs if doc["kind"] == "Ingress"]
    assert len(ingresses) == 1  # nothing else is exposed


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_kubernetes_secrets_come_from_the_secret(manifests, name):
    container = next(doc for doc in manifests[name] if doc["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    secrets = {"INTERNAL_AUTH_TOKEN"} | ({"DEVICE_TOKEN_SECRET"} if name == "gateway" else set())
    for key in secrets:
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "sonalyze-secrets", "key": key}, (name, key)
    services = [doc for doc in manifests[name] if doc["kind"] == "Service"]
    assert all(doc["spec"].get("type", "ClusterIP") == "ClusterIP" for doc in services)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_kubernetes_manifests_match_the_code(manifests, name):
    spec = SERVICES[name]
    docs = {doc["kind"]: doc for doc in manifests[name] if doc["kind"] != "NetworkPolicy"}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [name]
    assert container["ports"] == [{"containerPort": spec.default_port}]
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATHS[name], "port": spec.default_port}
    assert container["livenessProbe"]["httpGet"] == {"path": spec.health_path, "port": spec.default_port}
    env = {item["name"]: item for item in container["env"]}
    known = settings_env_names(name) | (S3_CREDENTIALS if env.get("BLOB_URL", {}).get("value", "").startswith("s3://") else set())
    unknown = set(env) - known
    assert not unknown, f"{name} does not read {sorted(unknown)}"
    assert docs["Service"]["spec"]["ports"] == [{"port": spec.default_port, "targetPort": spec.default_port}]
    secret = {doc["kind"]: doc for doc in manifests["secrets.example"]}["Secret"]
    for item in container["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]


def test_dockerfile_serves_the_service_named_by_the_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["sonalyze", "serve"]' in dockerfile
    assert "pip install ." in dockerfile


def deployments(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for docs in manifests.values() for doc in docs if doc["kind"] == "Deployment"}


def test_kubernetes_every_deployment_has_two_replicas_and_a_disruption_budget(manifests):
    found = deployments(manifests)
    assert set(found) == set(SERVICES) | {"worker"}
    budgets = [doc for docs in manifests.values() for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    for name, deployment in found.items():
        replicas = deployment["spec"]["replicas"]
        assert replicas >= 2, name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, name
        assert 1 <= covering[0]["spec"]["minAvailable"] < replicas, name


def _autoscalers(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    return {
        doc["spec"]["scaleTargetRef"]["name"]: doc
        for docs in manifests.values() for doc in docs if doc["kind"] == "HorizontalPodAutoscaler"
    }


def test_kubernetes_gateway_scales_on_its_own_connection_gauge(manifests):
    autoscaler = _autoscalers(manifests)["gateway"]["spec"]
    assert autoscaler["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert autoscaler["minReplicas"] >= 2
    (metric,) = autoscaler["metrics"]
    assert metric["type"] == "Pods"
    exported = {family.name for family in GatewayMetrics().registry.collect()}
    assert metric["pods"]["metric"]["name"] in exported
    assert metric["pods"]["metric"]["name"] == "gateway_connections"  # open WebSocket connections, not devices


def test_kubernetes_workers_scale_on_the_queue_depth(manifests):
    """External metric: the length of Dramatiq's queue lists in Redis, one per queue the code declares."""
    from dramatiq.brokers.redis import RedisBroker

    autoscaler = _autoscalers(manifests)["worker"]["spec"]
    assert autoscaler["minReplicas"] >= 2
    (metric,) = autoscaler["metrics"]
    assert metric["type"] == "External"
    namespace = inspect.signature(RedisBroker).parameters["namespace"].default
    (expression,) = metric["external"]["metric"]["selector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("key", "In")
    assert set(expression["values"]) == {f"{namespace}:{queue}" for queue in QUEUES}


def test_kubernetes_worker_runs_the_cli_worker_on_the_services_queue(manifests):
    worker = deployments(manifests)["worker"]["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(worker_argv(worker["command"], worker["args"]))
    assert args.command == "worker" and args.processes >= 1
    env = {item["name"]: item for item in worker["env"]}
    assert set(env) <= settings_env_names("worker") | S3_CREDENTIALS
    probe = " ".join(worker["readinessProbe"]["exec"]["command"])
    assert "TASK_QUEUE_URL" in probe and "ping()" in probe  # ready while the queue answers
    for name in ("measurement", "simulation"):
        container = deployments(manifests)[name]["spec"]["template"]["spec"]["containers"][0]
        service_env = {item["name"]: item for item in container["env"]}
        assert service_env["TASK_QUEUE_URL"] == env["TASK_QUEUE_URL"], name
        assert service_env["BLOB_URL"]["value"].startswith("s3://"), name  # a store every worker reaches


def test_kubernetes_postgres_and_redis_admit_exactly_their_clients(manifests):
    policies = {doc["metadata"]["name"]: doc["spec"] for doc in manifests["default-deny"]}
    clients: dict[str, set[str]] = {"postgres-ingress": set(), "redis-ingress": set()}
    for name, deployment in deployments(manifests).items():
        for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
            if item["name"] == "DATABASE_URL":
                clients["postgres-ingress"].add(name)
            if str(item.get("value", "")).startswith("redis://"):
                clients["redis-ingress"].add(name)
    for policy, expected in clients.items():
        (rule,) = policies[policy]["ingress"]
        assert {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]} == expected, policy
