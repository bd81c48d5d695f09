"""The deployment material agrees with the server and with itself.

Nothing here starts Kubernetes, Envoy or Docker. These checks read
deploy/ and docs/DEPLOYMENT.md and fail when they drift: a setting the server
does not have, a probe on a port nothing listens on, a Secret key the example
lacks, a grace period shorter than the shutdown it has to cover.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from generated.incident_manager.v1 import alert_ingestion_service_pb2, incident_service_pb2
from incident_manager.config import (
    LOG_LEVELS,
    Settings,
    env_name,
    load_settings,
    parse_duration,
)
from incident_manager.entrypoints.server import LIVENESS
from incident_manager.paging import load_paging_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ENVOY = DEPLOY / "envoy" / "envoy.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
GUIDE = ROOT / "docs" / "DEPLOYMENT.md"
EXAMPLE_SECRETS = KUBERNETES / "secret.example.yaml"

CONTAINER = "incident-manager"

# Settings that deploy/ or docs/DEPLOYMENT.md may name before
# incident_manager/config.py defines them (a setting promised by an open issue).
# Empty since the auth/TLS/metrics work (issue 4) added TOKENS_FILE, TLS_*,
# METRICS_LISTEN, HEALTH_LISTEN and REFLECTION. Add a name only with the issue
# that promises it, and remove it once config.py has it:
# test_every_setting_named_in_the_deployment_is_a_real_one prints the list and
# fails on names that nothing uses.
PENDING_SETTINGS: frozenset[str] = frozenset()

SETTING_NAME = re.compile(r"\bINCIDENT_MANAGER_[A-Z0-9_]*[A-Z0-9]\b")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def config_maps() -> dict[str, list[Path]]:
    """The ConfigMaps kustomization.yaml generates, by name, with the files they hold."""
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    return {
        generator["name"]: [KUBERNETES / name for name in generator["files"]]
        for generator in kustomization.get("configMapGenerator", [])
    }


def manifests() -> list[Path]:
    """The YAML files of deploy/ that Kubernetes reads as objects: not the files that
    become ConfigMaps."""
    generated = {path for files in config_maps().values() for path in files}
    return sorted(path for path in DEPLOY.rglob("*.yaml") if path not in generated)


def manifest(kind: str, name: str) -> dict[str, Any]:
    for path in (KUBERNETES / "deployment.yaml", KUBERNETES / "service.yaml"):
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} named {name} in {KUBERNETES}")


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("Deployment", "incident-manager")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec()["containers"] if c["name"] == CONTAINER]
    (only,) = found
    return only


def env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container()["env"]}


def container_ports() -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container()["ports"]}


def listen_port(variable: str) -> int:
    return int(env()[variable]["value"].rpartition(":")[2])


def seconds(variable: str) -> float:
    return parse_duration(env()[variable]["value"]).total_seconds()


def example_secrets() -> dict[str, dict[str, str]]:
    """Secret name -> its keys and (fake) values."""
    return {
        doc["metadata"]["name"]: {**doc.get("data", {}), **doc.get("stringData", {})}
        for doc in documents(EXAMPLE_SECRETS)
        if doc["kind"] == "Secret"
    }


def real_settings() -> set[str]:
    return {env_name(field.name) for field in dataclasses.fields(Settings)}


def files_naming_settings() -> Iterator[Path]:
    yield from sorted(path for path in DEPLOY.rglob("*") if path.is_file())
    yield GUIDE


@pytest.mark.parametrize("path", manifests(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_yaml_document_in_deploy_parses_as_a_mapping(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if path.is_relative_to(KUBERNETES):
            assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: {doc}"


def test_kustomization_lists_every_manifest_but_never_the_example_secrets() -> None:
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {"deployment.yaml", "service.yaml"}
    assert all((KUBERNETES / name).is_file() for name in listed)
    assert EXAMPLE_SECRETS.name not in listed, "applying it would replace real Secrets"


def test_the_deployment_runs_three_replicas_of_python_m_incident_manager() -> None:
    deployment = manifest("Deployment", "incident-manager")
    assert deployment["spec"]["replicas"] == 3
    assert container()["command"] == ["python", "-m", "incident_manager"]
    assert container_ports() == {"grpc": 9000, "health": 9001, "metrics": 9002}


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_are_native_grpc_probes_of_the_whole_server(probe: str) -> None:
    grpc = container()[probe]["grpc"]
    assert isinstance(grpc["port"], int), "gRPC probes take a port number, not a name"
    assert grpc["port"] in container_ports().values()
    # Readiness follows the whole server ('' turns NOT_SERVING without its
    # database); liveness asks only whether the process is alive.
    expected = LIVENESS if probe == "livenessProbe" else ""
    assert grpc.get("service", "") == expected


def test_liveness_is_more_lenient_than_readiness() -> None:
    def patience(probe: str) -> int:
        settings = container()[probe]
        period: int = settings.get("periodSeconds", 10)
        failures: int = settings.get("failureThreshold", 3)
        return period * failures

    assert patience("livenessProbe") > patience("readinessProbe")


def test_the_probes_reach_the_plaintext_health_listener_when_the_api_speaks_tls() -> None:
    variables = env()
    ports = container_ports()
    assert listen_port("INCIDENT_MANAGER_LISTEN") == ports["grpc"]
    assert listen_port("INCIDENT_MANAGER_METRICS_LISTEN") == ports["metrics"]
    probe_ports = {
        container()[probe]["grpc"]["port"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    if "INCIDENT_MANAGER_TLS_CERT" in variables:
        # The kubelet's gRPC probe connects in plaintext; on a TLS port it
        # fails the handshake and the pod never becomes Ready.
        assert listen_port("INCIDENT_MANAGER_HEALTH_LISTEN") == ports["health"]
        assert probe_ports == {ports["health"]}
    else:
        assert probe_ports <= {ports["grpc"], ports.get("health")}


def test_every_setting_named_in_the_deployment_is_a_real_one() -> None:
    real = real_settings()
    named = {
        (name, str(path.relative_to(ROOT)))
        for path in files_naming_settings()
        for name in SETTING_NAME.findall(path.read_text(encoding="utf-8"))
    }
    print("allowed before incident_manager/config.py has them:", sorted(PENDING_SETTINGS))
    print("of those, config.py has these already (drop them):", sorted(PENDING_SETTINGS & real))
    unknown = sorted(
        f"{name} in {where}" for name, where in named if name not in real | PENDING_SETTINGS
    )
    assert not unknown, f"not settings of the server: {unknown}"
    unused = PENDING_SETTINGS - {name for name, _ in named}
    assert not unused, f"keep PENDING_SETTINGS minimal; nothing names {sorted(unused)}"


def test_the_servers_own_parser_accepts_every_value_the_deployment_sets() -> None:
    secrets = example_secrets()
    environ: dict[str, str] = {}
    for name, entry in env().items():
        if "value" in entry:
            environ[name] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            environ[name] = secrets[ref["name"]][ref["key"]]
    settings = load_settings([], environ)
    assert settings.log_level in LOG_LEVELS
    assert settings.listen == "0.0.0.0:9000"
    assert settings.drain_delay == timedelta(seconds=5)
    assert settings.shutdown_grace == timedelta(seconds=20)
    assert settings.database.startswith("postgresql://")


def test_termination_grace_outlasts_the_drain_delay_plus_the_shutdown_grace() -> None:
    budget = seconds("INCIDENT_MANAGER_DRAIN_DELAY") + seconds("INCIDENT_MANAGER_SHUTDOWN_GRACE")
    assert pod_spec()["terminationGracePeriodSeconds"] > budget


def test_every_secret_the_deployment_reads_is_in_the_example() -> None:
    secrets = example_secrets()
    wanted: list[tuple[str, str]] = []
    for entry in container()["env"]:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            wanted.append((ref["name"], ref["key"]))
    for volume in pod_spec()["volumes"]:
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            assert name in secrets, f"volume {volume['name']}: no Secret {name} in the example"
            wanted.extend((name, item["key"]) for item in volume["secret"].get("items", []))
    assert wanted
    missing = [(name, key) for name, key in wanted if key not in secrets.get(name, {})]
    assert not missing, f"not in {EXAMPLE_SECRETS.name}: {missing}"


def test_the_mounted_files_are_where_the_settings_point() -> None:
    mounts = {mount["name"]: mount["mountPath"] for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    files: set[str] = set()
    for name, path in mounts.items():
        secret = volumes[name].get("secret")
        if secret is None:
            continue
        keys = [item["path"] for item in secret.get("items", [])] or list(
            example_secrets()[secret["secretName"]]
        )
        files.update(f"{path}/{key}" for key in keys)
    for variable in ("TOKENS_FILE", "TLS_CERT", "TLS_KEY"):
        assert env()[f"INCIDENT_MANAGER_{variable}"]["value"] in files


def test_the_paging_config_map_is_mounted_where_the_setting_points() -> None:
    [(name, [file])] = config_maps().items()
    assert file.name == "paging.yaml"
    volumes = {
        volume["name"]: volume["configMap"]
        for volume in pod_spec()["volumes"]
        if volume.get("configMap", {}).get("name") == name
    }
    [(volume, config_map)] = volumes.items()
    assert "items" not in config_map, "every key of the ConfigMap becomes a file"
    [mount] = [m for m in container()["volumeMounts"] if m["name"] == volume]
    # A subPath mount never sees the ConfigMap change, so a SIGHUP would reload the old file.
    assert "subPath" not in mount and mount["readOnly"] is True
    assert env()["INCIDENT_MANAGER_PAGING_CONFIG"]["value"] == f"{mount['mountPath']}/{file.name}"


def test_the_deployed_paging_file_loads_and_its_secrets_come_from_the_secret() -> None:
    [[file]] = config_maps().values()
    loaded = load_paging_file(str(file))
    assert not loaded.warnings, loaded.warnings
    named = {
        name
        for channel in loaded.config.channels
        for name in (
            getattr(channel, "secret_env", None),
            getattr(getattr(channel, "smtp", None), "password_env", None),
        )
        if name
    }
    assert named == {"OPS_HOOK_SECRET", "SMTP_PASSWORD"}
    secrets = example_secrets()
    for name in named:
        ref = env()[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]], f"{name}: not in {EXAMPLE_SECRETS.name}"
    signing = secrets["incident-manager-paging"]["ops-hook-secret"]
    assert signing.startswith("whsec_") and base64.b64decode(signing.removeprefix("whsec_"))


def test_the_deployment_guide_says_how_a_changed_paging_file_takes_effect() -> None:
    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert "python -m incident_manager.paging check deploy/kubernetes/paging.yaml" in guide
    assert "kubectl apply -k deploy/kubernetes" in guide
    assert "os.kill(1, signal.SIGHUP)" in guide, "the SIGHUP alternative"
    assert "SIGHUP: paging configuration reloaded" in guide


def test_the_example_tokens_file_is_in_the_format_the_server_reads() -> None:
    access = pytest.importorskip("incident_manager.domain.access")
    tokens = example_secrets()["incident-manager"]["tokens"]
    credentials = access.Credentials.parse(tokens)
    assert credentials.tokens


def test_the_pods_run_unprivileged_on_a_read_only_root() -> None:
    pod = pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    own = container()["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]


def test_kubernetes_injects_no_variables_with_the_settings_prefix() -> None:
    # Service links would add INCIDENT_MANAGER_SERVICE_HOST and the like.
    assert pod_spec()["enableServiceLinks"] is False


def test_the_image_runs_as_the_user_and_entrypoint_the_deployment_expects() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    (user,) = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)
    assert int(user) == pod_spec()["securityContext"]["runAsUser"]
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert yaml.safe_load(entrypoint) == container()["command"]
    (exposed,) = re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE)
    assert {int(port) for port in exposed.split()} <= set(container_ports().values())


def test_the_services_reach_the_pods_grpc_port_by_name() -> None:
    pod_labels = manifest("Deployment", "incident-manager")["spec"]["template"]["metadata"][
        "labels"
    ]
    headless = manifest("Service", "incident-manager-headless")
    assert headless["spec"]["clusterIP"] == "None"
    for service in (manifest("Service", "incident-manager"), headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {port["name"]: port for port in service["spec"]["ports"]}
        assert ports["grpc"]["port"] == 9000
        assert ports["grpc"]["targetPort"] == "grpc"
        assert ports["grpc"]["appProtocol"] == "grpc"
        assert all(port["targetPort"] in container_ports() for port in ports.values())


def test_the_disruption_budget_keeps_two_of_the_three_replicas() -> None:
    budget = manifest("PodDisruptionBudget", "incident-manager")
    assert budget["spec"]["minAvailable"] == 2
    labels = manifest("Deployment", "incident-manager")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def envoy_cluster() -> dict[str, Any]:
    (config,) = documents(ENVOY)
    (cluster,) = config["static_resources"]["clusters"]
    return cluster  # type: ignore[no-any-return]


def envoy_routes() -> list[dict[str, Any]]:
    (config,) = documents(ENVOY)
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    (host,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    return host["routes"]  # type: ignore[no-any-return]


def envoy_route_for(path: str) -> dict[str, Any]:
    """The first route whose match takes `path`, as Envoy picks it."""
    for route in envoy_routes():
        match = route["match"]
        if "prefix" in match and path.startswith(match["prefix"]):
            return route["route"]  # type: ignore[no-any-return]
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
            return route["route"]  # type: ignore[no-any-return]
    raise AssertionError(f"no Envoy route takes {path}")


def test_envoy_balances_grpc_over_the_headless_service_with_http2() -> None:
    cluster = envoy_cluster()
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["lb_policy"] in ("ROUND_ROBIN", "LEAST_REQUEST")
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (endpoints,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = endpoints["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    namespace = kustomization["namespace"]
    assert address["address"] == f"incident-manager-headless.{namespace}.svc.cluster.local"
    assert address["port_value"] == container_ports()["grpc"]


def test_envoy_health_checks_take_a_draining_pod_out_within_the_drain_delay() -> None:
    (check,) = envoy_cluster()["health_checks"]
    assert check["grpc_health_check"]["service_name"] == ""
    interval = parse_duration(check["interval"]).total_seconds()
    assert interval * check["unhealthy_threshold"] <= seconds("INCIDENT_MANAGER_DRAIN_DELAY")


def test_envoy_neither_times_out_nor_soon_idles_out_the_long_lived_streams() -> None:
    streams = {
        incident_service_pb2.DESCRIPTOR.services_by_name["IncidentService"],
        alert_ingestion_service_pb2.DESCRIPTOR.services_by_name["AlertIngestionService"],
    }
    paths = [
        f"/{service.full_name}/{method.name}"
        for service in streams
        for method in service.methods
        if method.server_streaming
    ]
    assert "/incident_manager.v1.IncidentService/StreamIncidents" in paths
    for path in paths:
        route = envoy_route_for(path)
        assert route["timeout"] == "0s", path
        idle = parse_duration(route.get("idle_timeout", "300s"))
        assert idle == timedelta(0) or idle >= timedelta(hours=1), path


def test_envoy_retries_calls_the_server_refused_as_unavailable() -> None:
    for path in (
        "/incident_manager.v1.AlertIngestionService/SubmitAlert",
        "/incident_manager.v1.IncidentService/StreamIncidents",
    ):
        retry_on = envoy_route_for(path)["retry_policy"]["retry_on"].split(",")
        assert "unavailable" in retry_on
        assert "reset" not in retry_on, "a reset call may already have been applied"
