"""OHIF 3 shows ainode's SEG: Orthanc (DICOMweb) and OHIF's prebuilt viewer on one origin (nginx with the
compose file's site configuration and OHIF configuration), headless Chromium driven by Selenium. The
segment panel lists every segment by its label, and the screenshot with the segment shown differs from
the one with it hidden where the mask is. Screenshots are kept as test artefacts in ``test-artifacts/``."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ainode.kit import wait_for
from conftest import NodeProcess, Orthanc, PhantomSeries, free_port, phantom_series

pytestmark = pytest.mark.slow

OHIF_PACKAGE = "@ohif/app@3.13.2"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CACHE = Path.home() / ".cache" / "ainode-tests"

APP_CONFIG = Path(__file__).resolve().parents[1] / "docker" / "ohif" / "app-config.js"  # the compose file's too


def fetch_ohif() -> Path:
    """The prebuilt viewer from the npm registry (pinned version and integrity), cached between runs."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "ohif-app-3.13.2.tgz"
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to fetch the OHIF viewer")
        subprocess.run([npm, "pack", OHIF_PACKAGE, "--pack-destination", str(CACHE)], check=True,
                       capture_output=True, timeout=600)
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    assert digest == OHIF_INTEGRITY, f"{tarball} does not match the pinned integrity"
    return tarball


NGINX_SITE = Path(__file__).resolve().parents[1] / "docker" / "ohif" / "nginx.conf"  # the compose file's site


class SameOrigin:
    """Debian's nginx serving OHIF's dist/ and proxying /dicom-web and /wado to Orthanc with the compose
    file's own site configuration (docker/ohif/nginx.conf); only its port, upstream and root are moved
    to this test's."""

    def __init__(self, folder: Path, dist: Path, orthanc_port: int) -> None:
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True)
        site = NGINX_SITE.read_text()
        for old, new in (("listen 80;", f"listen 127.0.0.1:{self.port};"),
                         ("http://orthanc:8042/", f"http://127.0.0.1:{orthanc_port}/"),
                         ("root /usr/share/nginx/html;", f"root {dist};")):
            assert old in site, f"{NGINX_SITE} no longer has {old!r}: update this test with it"
            site = site.replace(old, new)
        (folder / "site.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the test's private folder
        temp = "".join(f"    {kind}_temp_path {folder / kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))
        (folder / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
            "events {}\nhttp {\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
            f"    access_log off;\n    sendfile on;\n{temp}    include {folder / 'site.conf'};\n}}\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            pytest.fail("Debian's nginx is needed (.ci/run installs it)")
        self.process = subprocess.Popen([nginx, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
                                         "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is not None or self._answers(), 30,  # type: ignore[union-attr]
                 lambda: f"nginx did not start: {(self.folder / 'error.log').read_text(errors='replace')}")
        assert self.process.poll() is None, (self.folder / "error.log").read_text(errors="replace")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.origin}/app-config.js", timeout=5) as response:
                return response.status == 200 and response.headers.get("Cross-Origin-Opener-Policy") == "same-origin"
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture()
def viewer(tmp_path: Path) -> Path:
    with tarfile.open(fetch_ohif()) as archive:
        archive.extractall(tmp_path / "ohif", filter="data")
    dist = tmp_path / "ohif" / "package" / "dist"
    shutil.copy(APP_CONFIG, dist / "app-config.js")
    return dist


def chromium():  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("Debian's chromium and chromium-driver are needed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--window-size=1600,1000",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def screenshot(browser, path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    browser.save_screenshot(str(path))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_ohif_lists_and_draws_the_segments(tmp_path: Path, viewer: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    dist = viewer
    orthanc = Orthanc(tmp_path / "orthanc")
    node: NodeProcess = node_factory(orthanc.dicom, callers='["ORTHANC", "STORESCU"]', pacs_ae="ORTHANC",
                                     settle_seconds=1.0)
    server = SameOrigin(tmp_path / "nginx", dist.resolve(), orthanc.http)
    browser = None
    try:
        server.start()
        orthanc.start(node.port)
        node.serve()
        series: PhantomSeries = phantom_series(tmp_path / "series", seed=61, matrix=192, slice_thickness=3.0)
        study_uid = series.identity.study_instance_uid
        study_id = orthanc.upload(series.paths, study_uid)
        orthanc.post("/modalities/ainode/store", study_id.encode(), "text/plain")
        orthanc.wait_for_results(study_uid, node)
        seg_series = orthanc.get(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")[0]  # type: ignore[index]
        seg_series_uid = seg_series["0020000E"]["Value"][0]

        browser = chromium()
        browser.set_page_load_timeout(120)
        browser.get(f"{server.origin}/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={seg_series_uid}")
        wait_for(lambda: "Do you want to open this Segmentation" in browser.page_source, 120,
                 lambda: f"OHIF did not offer the SEG; page: {browser.page_source[:2000]}")
        browser.find_element(By.CSS_SELECTOR, "[data-cy=yes-hydrate-btn]").click()
        panel = browser.find_elements(By.CSS_SELECTOR, "[data-cy=panelSegmentation-btn]")
        if panel:
            panel[0].click()
        wait_for(lambda: "Lung" in browser.page_source, 60, "the segment panel does not list the Lung segment")
        ARTIFACTS.mkdir(exist_ok=True)
        before = screenshot(browser, ARTIFACTS / "ohif-seg-loaded.png")
        lung = browser.find_element(By.XPATH, "//*[normalize-space(text())='Lung']")
        browser.execute_script("arguments[0].click();", lung)  # jump to the segment
        wait_for(lambda: np.abs(screenshot(browser, tmp_path / "now.png") - before).sum(axis=-1).astype(bool).sum()
                 > 5000, 60, "clicking the Lung segment did not move the view to it")
        shown = screenshot(browser, ARTIFACTS / "ohif-seg-shown.png")
        toggle = browser.find_element(By.CSS_SELECTOR, "[data-cy=all-segments-visibility-toggle]")
        browser.execute_script("arguments[0].click();", toggle)  # hide the whole segmentation
        wait_for(lambda: np.abs(screenshot(browser, tmp_path / "now.png") - shown).sum() > 0, 30,
                 "hiding the segmentation changed nothing on screen")
        hidden = screenshot(browser, ARTIFACTS / "ohif-seg-hidden.png")
        changed = np.abs(shown - hidden).sum(axis=-1) > 30
        tint = (shown - hidden)[changed].mean(axis=0)
        print(f"{int(changed.sum())} screen pixels change when the segments are hidden; mean change RGB {tint}")
        assert changed.sum() > 5000, "hiding the segmentation changed (almost) nothing on screen"
        # the lungs are drawn in their recommended colour (128, 174, 128): green over the dark lung
        assert tint[1] > tint[0] and tint[1] > tint[2], f"the overlay is not green where the lungs are: {tint}"
        # and only over the lungs: at W 1500 / L -500 lung (-850 HU) is dark grey, the body around it bright;
        # the label takes the lung's edge on the pleura, as references draw it, a thin rim of brighter pixels
        over_dark = float((hidden[changed].mean(axis=-1) < 120).mean())
        assert over_dark > 0.90, f"only {over_dark:.0%} of the overlay lies on the dark lungs"
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
        orthanc.stop()
