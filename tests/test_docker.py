"""The Docker files hold settings ainode accepts, and the three services agree on names, AE titles and
ports: checked without an engine, in seconds (tests/test_compose.py starts the compose file for real; the
nginx and OHIF configuration are exercised by tests/test_ohif.py too)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ainode.config import load_settings

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def dockerfile_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("ENV "):
            values.update(part.split("=", 1) for part in shlex.split(line[4:]) if "=" in part)  # type: ignore[misc]
    return values


@pytest.fixture()
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_image_and_compose_environment_is_a_valid_configuration(compose: dict, monkeypatch: pytest.MonkeyPatch,  # type: ignore[type-arg]
                                                                    tmp_path: Path) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "COPY config/ainode.toml /etc/ainode/ainode.toml" in dockerfile
    assert '"--config", "/etc/ainode/ainode.toml"' in dockerfile
    service = compose["services"]["ainode"]["environment"]
    assert all(key.startswith("AINODE_") for key in service), sorted(service)
    environment = {**dockerfile_env(), **service}
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings(DOCKER.parent / "config" / "ainode.toml")

    orthanc = compose["services"]["orthanc"]["environment"]
    assert settings.node.allowed_calling_ae_titles == [orthanc["ORTHANC__DICOM_AET"]]
    assert settings.node.bind_address == "0.0.0.0"  # reachable from the other containers
    assert settings.status.bind_address == "0.0.0.0" and settings.status.password_file is not None
    assert "status-password" in compose["services"]["ainode"]["secrets"]
    pacs = settings.destinations[settings.delivery.result_destinations[0]]
    assert (pacs.host, pacs.port, pacs.ae_title) == ("orthanc", int(orthanc["ORTHANC__DICOM_PORT"]),
                                                     orthanc["ORTHANC__DICOM_AET"])
    # Orthanc knows ainode by its service name, AE title and port
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert modalities["AINODE"] == [settings.node.ae_title, "ainode", settings.node.port]
    published = [p.rsplit(":", 1)[1] for p in compose["services"]["ainode"]["ports"]]
    assert str(settings.node.port) in published and str(settings.status.port) in published
    volume = compose["services"]["ainode"]["volumes"][0].split(":")[1]
    assert str(settings.storage.root) == volume == environment["AINODE_STORAGE__ROOT"]


def test_the_viewer_proxies_the_orthanc_service(compose: dict) -> None:  # type: ignore[type-arg]
    site = (DOCKER / "ohif" / "nginx.conf").read_text()
    upstreams = set(re.findall(r"proxy_pass http://([\w.-]+):(\d+)/", site))
    assert upstreams == {("orthanc", "8042")}, upstreams
    assert "127.0.0.1:8042:8042" in compose["services"]["orthanc"]["ports"]
    config = (DOCKER / "ohif" / "app-config.js").read_text()
    assert "/dicom-web" in config and "http://" not in config  # same origin: relative DICOMweb roots


def test_torch_is_its_cpu_build_unless_a_site_names_another(compose: dict) -> None:  # type: ignore[type-arg]
    """One named choice for the wheelhouse and the image: compose's AINODE_TORCH reaches the Dockerfile's
    TORCH argument, whose default and the wheelhouse's are the CPU build."""
    assert compose["services"]["ainode"]["build"]["args"]["TORCH"] == "${AINODE_TORCH:-cpu}"
    assert "ARG TORCH=cpu" in (DOCKER / "Dockerfile").read_text()
    assert "torch=cpu" in (DOCKER / "wheelhouse.sh").read_text()
