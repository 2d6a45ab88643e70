from pathlib import Path

import pytest

from ainode.config import load_settings
from db.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_config_file_is_valid_and_equals_the_defaults() -> None:
    assert load_settings(REPO / "config" / "ainode.toml") == load_settings(None)


def test_defaults_listen_on_loopback_and_send_to_a_named_destination() -> None:
    settings = load_settings(None)
    assert (settings.node.ae_title, settings.node.port, settings.node.bind_address) == ("AINODE", 11112, "127.0.0.1")
    assert settings.delivery.result_destinations == ["pacs"]
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith("ainode.db")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[node]\nae_titel = "X"\n', "node.ae_titel: unknown key"),
        ("[node]\nport = 70000\n", "node.port: Input should be less than or equal to 65535"),
        ('[node]\nae_title = "THIS-TITLE-IS-FAR-TOO-LONG"\n', "node.ae_title: AE title 'THIS-TITLE-IS-FAR-TOO-LONG'"),
        ("[node]\nallowed_calling_ae_titles = []\n", "unknown callers are always refused"),
        ('[delivery]\nresult_destinations = ["archive"]\n', "names 'archive', but [destinations] has pacs"),
        ('[worker]\ndevice = "gpu"\n', "worker.device: device 'gpu' must be auto, cpu, cuda or cuda:N"),
        ('[destinations.pacs]\nhost = "x"\n', "destinations.pacs: a DICOM destination needs host, port and ae_title"),
        ("[queue\n", "not valid TOML"),
    ],
)
def test_a_bad_key_or_value_is_refused_naming_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigurationError) as caught:
        load_settings(path)
    assert expected in str(caught.value)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[node]\nport = 4000\n[destinations.pacs]\nhost = "10.0.0.1"\nport = 104\nae_title = "PACS"\n')
    monkeypatch.setenv("AINODE_NODE__PORT", "4001")
    monkeypatch.setenv("AINODE_DESTINATIONS__PACS__HOST", "127.0.0.2")
    settings = load_settings(path)
    assert settings.node.port == 4001
    assert settings.destinations["pacs"].host == "127.0.0.2" and settings.destinations["pacs"].port == 104


def test_a_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AINODE_QUEUE__MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigurationError, match="queue.max_attempts"):
        load_settings(None)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_an_environment_variable_for_no_section_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AINODE_WORKERS__DEVICE", "cuda")  # "workers": a typo for "worker"
    with pytest.raises(ConfigurationError, match="AINODE_WORKERS__DEVICE: unknown section 'workers'"):
        load_settings(None)
