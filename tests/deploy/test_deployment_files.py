"""The compose file and Kubernetes manifests agree with the code: names, ports, health paths, env vars.

There is no Docker engine here, so this is what can be checked of them: they parse, every service of
seed 004 is there on its port, and every environment variable they set is one the service really reads.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from pydantic_settings import BaseSettings

from sonalyze.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_CLASSES = {
    "gateway": "sonalyze.gateway.config:GatewaySettings",
    "lobby": "sonalyze.lobby.config:LobbySettings",
    "measurement": "sonalyze.measurement.settings:MeasurementSettings",
    "simulation": "sonalyze.simulation.config:SimulationSettings",
    "storage": "sonalyze.storage.settings:StorageSettings",
}
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
    assert set(SERVICES) | {"postgres"} == set(services)
    for name, spec in SERVICES.items():
        service = services[name]
        assert service["command"] == [name]
        assert service["environment"]["PORT"] == str(spec.default_port)
        health = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{spec.default_port}{spec.health_path}" in health


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
    "gateway": {"lobby"},
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
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": spec.health_path, "port": spec.default_port}
    env_names = {item["name"] for item in container["env"]}
    unknown = env_names - settings_env_names(name)
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
