"""An API caller cannot make the app read, copy or serve back a server file it names in a file payload.

The app (the embedded demo bundles) is launched in this process on a free 127.0.0.1 port and called over HTTP
as ``gradio_client`` would, but with hand-made ``FileData`` payloads that name server paths instead of files the
caller uploaded. A real upload must still work (so a refusal is not just a broken endpoint).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from conftest import load_repo_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SECRET = f"hirviz-secret-{uuid.uuid4().hex}"  # unique per run: stale cache files cannot match
ENDPOINTS = ("identify", "identify_example")


def _load_app_module():
    return load_repo_module("hirviz_app_security", "app.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    app = _load_app_module()
    if not all((p / "config.json").is_file() for p in app.DEFAULT_BUNDLES):
        pytest.skip("the embedded demo bundles are not built (python -m train demo)")
    workdir = tmp_path_factory.mktemp("security-cwd")
    secrets = {
        "temp file": tmp_path_factory.mktemp("outside") / "secret.txt",
        "working directory file": workdir / "secret.txt",
        "working directory dotfile": workdir / ".env",
    }
    for path in secrets.values():
        path.write_text(f"{SECRET}\n", encoding="utf-8")
    before_cwd = os.getcwd()
    os.chdir(workdir)  # Gradio allows the working directory and the temp folder for files the app *returns*
    port = free_port()
    os.environ.pop("SPACE_ID", None)
    os.environ["GRADIO_SERVER_PORT"] = str(port)
    try:
        demo = app.build_app(warm_up=False)
        app.launch(demo, prevent_thread_lock=True, quiet=True)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield {"client": client, "secrets": secrets}
        demo.close()
    finally:
        os.environ.pop("GRADIO_SERVER_PORT", None)
        os.chdir(before_cwd)


def _call(client: httpx.Client, endpoint: str, image: dict) -> str:
    """The whole event stream of one call of ``endpoint`` with ``image`` as the photo (no barcode)."""
    # then where a barcode goes, typed names, names per rank, ranks shown
    data = [image, "", 0, 0, 0, 0, 0, 0, 0, 0, "species", "real", "", 5, "all ranks"]
    started = client.post(f"/gradio_api/call/{endpoint}", json={"data": data})
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    return client.get(f"/gradio_api/call/{endpoint}/{event_id}").text


def _payload(path: str) -> dict:
    return {"path": path, "orig_name": "specimen.png", "meta": {"_type": "gradio.FileData"}}


def _cache_copies() -> list[Path]:
    """Files in Gradio's cache folder holding the secret."""
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    hits = []
    for path in cache.rglob("*") if cache.is_dir() else []:
        try:
            if path.is_file() and path.stat().st_size < 1_000_000 and SECRET in path.read_text(errors="ignore"):
                hits.append(path)
        except OSError:
            continue
    return hits


def test_an_uploaded_photo_is_identified(server):
    client = server["client"]
    photo = next((REPO / "assets" / "examples").glob("*.jpg"))
    with photo.open("rb") as handle:
        uploaded = client.post("/gradio_api/upload", files={"files": (photo.name, handle, "image/jpeg")})
    assert uploaded.status_code == 200, uploaded.text
    stream = _call(client, "identify", _payload(uploaded.json()[0]))
    assert "event: complete" in stream, stream[-500:]
    assert "species" in stream


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_named_server_file_is_neither_copied_nor_served(server, endpoint):
    client, secrets = server["client"], server["secrets"]
    upload_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    targets = [str(p) for p in secrets.values()] + [
        "/etc/passwd",
        str(REPO / "app.py"),
        "secret.txt",  # relative to the server's working directory
        str(upload_dir / ".." / secrets["temp file"].relative_to(tempfile.gettempdir())),  # ../ out of the cache
    ]
    for target in targets:
        stream = _call(client, endpoint, _payload(target))
        assert "event: complete" not in stream, f"{endpoint} accepted the server path {target}"
        assert SECRET not in stream and "root:" not in stream, f"{endpoint} returned the content of {target}"
        for path in (target, str(Path(target).resolve())):
            served = client.get(f"/gradio_api/file={path}")
            assert served.status_code != 200 or SECRET not in served.text, f"{path} was served"
            assert served.status_code != 200 or "root:" not in served.text, f"{path} was served"
    assert _cache_copies() == [], "a named server file was copied into Gradio's cache"
