"""OHIF 3 shows ainode's SEG: Orthanc (DICOMweb) and OHIF's prebuilt viewer on one origin, headless
Chromium driven by Selenium. The segment panel lists every segment by its label, and the screenshot with
the segment shown differs from the one with it hidden where the mask is. Screenshots are kept as test
artefacts in ``test-artifacts/``."""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ainode.demo import wait_for
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


class SameOrigin(http.server.ThreadingHTTPServer):
    """Serves OHIF's dist/ and proxies /dicom-web and /wado to Orthanc, as a hospital's web server would."""

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        self.dist = dist
        self.orthanc_port = orthanc_port
        super().__init__(("127.0.0.1", free_port()), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SameOrigin

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self, status: int, content_type: str, length: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith(("/dicom-web", "/wado")):
            self._proxy()
            return
        relative = self.path.split("?")[0].lstrip("/") or "index.html"
        target = (self.server.dist / relative).resolve()
        if not target.is_file() or self.server.dist not in target.parents:
            target = self.server.dist / "index.html"
        body = target.read_bytes()
        types = {".js": "application/javascript", ".css": "text/css", ".html": "text/html", ".wasm": "application/wasm",
                 ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}
        self._headers(200, types.get(target.suffix, "application/octet-stream"), len(body))
        self.wfile.write(body)

    def _proxy(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.server.orthanc_port}{self.path}",
                                         headers={k: v for k, v in self.headers.items()
                                                  if k.lower() in ("accept", "host")})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body, status = response.read(), response.status
                content_type = response.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as exc:
            body, status, content_type = exc.read(), exc.code, exc.headers.get("Content-Type", "text/plain")
        self._headers(status, content_type, len(body))
        self.wfile.write(body)


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
    server = SameOrigin(dist.resolve(), orthanc.http)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = None
    try:
        orthanc.start(node.port)
        node.serve()
        series: PhantomSeries = phantom_series(tmp_path / "series", seed=61, lesions=(2, 2), matrix=192,
                                               slice_thickness=3.0)
        study_uid = series.identity.study_instance_uid
        study_id = orthanc.upload(series.paths, study_uid)
        orthanc.post("/modalities/ainode/store", study_id.encode(), "text/plain")
        orthanc.wait_for_results(study_uid, node)
        seg_series = orthanc.get(f"/dicom-web/studies/{study_uid}/series?Modality=SEG")[0]  # type: ignore[index]
        seg_series_uid = seg_series["0020000E"]["Value"][0]

        browser = chromium()
        browser.set_page_load_timeout(120)
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        browser.get(f"{origin}/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={seg_series_uid}")
        wait_for(lambda: "Do you want to open this Segmentation" in browser.page_source, 120,
                 lambda: f"OHIF did not offer the SEG; page: {browser.page_source[:2000]}")
        browser.find_element(By.CSS_SELECTOR, "[data-cy=yes-hydrate-btn]").click()
        panel = browser.find_elements(By.CSS_SELECTOR, "[data-cy=panelSegmentation-btn]")
        if panel:
            panel[0].click()
        wait_for(lambda: "Lung" in browser.page_source and "Lesion" in browser.page_source, 60,
                 "the segment panel does not list Lung and Lesion")
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
        # and only over the lungs: at W 1500 / L -500 lung (-850 HU) is dark grey, the body around it bright
        over_dark = float((hidden[changed].mean(axis=-1) < 120).mean())
        assert over_dark > 0.95, f"only {over_dark:.0%} of the overlay lies on the dark lungs"
    finally:
        if browser is not None:
            browser.quit()
        server.shutdown()
        orthanc.stop()
