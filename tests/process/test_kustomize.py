"""`kubectl kustomize deploy/kubernetes` builds what docs/DEPLOYMENT.md says it applies.

tests/docs/test_deploy.py reads the files one by one; this runs kustomize itself (no
cluster is needed), where kubectl is installed, to see the paging ConfigMap it generates
and that the Deployment is pointed at it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERNETES = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def built() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    output = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc is not None]


def test_kustomize_makes_the_paging_file_a_config_map_the_deployment_mounts() -> None:
    objects = built()
    [config_map] = [doc for doc in objects if doc["kind"] == "ConfigMap"]
    name = config_map["metadata"]["name"]
    # The hash of the contents in the name is what makes an edit roll the pods out.
    assert name.startswith("incident-manager-paging-") and name != "incident-manager-paging-"
    assert config_map["data"] == {"paging.yaml": (KUBERNETES / "paging.yaml").read_text()}
    [deployment] = [doc for doc in objects if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    mounted = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
    assert mounted == [name]
    [container] = pod["containers"]
    secrets = {
        entry["name"]: entry["valueFrom"]["secretKeyRef"]["name"]
        for entry in container["env"]
        if "valueFrom" in entry
    }
    # Kustomize renames only what it generated; the paging Secret is made by hand.
    assert secrets["OPS_HOOK_SECRET"] == secrets["SMTP_PASSWORD"] == "incident-manager-paging"
    assert {doc["metadata"]["namespace"] for doc in objects} == {"incident-manager"}
