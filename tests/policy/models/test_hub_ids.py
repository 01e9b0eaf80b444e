"""policy.models.hub: model.path as a local folder or a Hub id (org/name[@revision]) from the local HF cache.

The cache is a real Hub cache layout (``hub_cache`` fixture, checked with huggingface_hub's own
``scan_cache_dir``) holding the session's tiny ``encoder_adapter_llm`` checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import scan_cache_dir
from safetensors.torch import load_file

from policy.models import load_audio_llm
from policy.models.hub import HubId, HubModelNotCachedError, hub_cache_dir, parse_hub_id, resolve_model_path

ROOT = Path(__file__).resolve().parents[3]
REPO = "funrl-test/tiny-asr"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def test_cache_layout_is_what_huggingface_hub_scans(hub_cache, tiny_model_dir):
    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    [repo] = scan_cache_dir(hub_cache).repos
    [rev] = repo.revisions
    files = sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file())
    assert (repo.repo_id, repo.repo_type, rev.commit_hash, set(rev.refs)) == (REPO, "model", COMMIT, {"main"})
    assert sorted(f.file_path.relative_to(rev.snapshot_path).as_posix() for f in rev.files) == files


@pytest.mark.parametrize("given", [REPO, f"{REPO}@main", f"{REPO}@{COMMIT}"])
def test_cached_id_resolves_to_its_snapshot_and_loads_the_same_weights(hub_cache, tiny_model_dir, given):
    snapshot = hub_cache.add(tiny_model_dir, REPO, COMMIT)
    folder = resolve_model_path(given)
    assert folder == snapshot and folder.is_dir()
    model = load_audio_llm(folder)
    expected = load_file(str(tiny_model_dir / "llm" / "model.safetensors"))
    got = dict(model.llm_state_dict())
    assert model.model_type == "encoder_adapter_llm" and expected.keys() <= got.keys()
    assert all(torch.equal(got[name], tensor) for name, tensor in expected.items())


def test_revision_picks_the_snapshot_its_ref_names(hub_cache, tiny_model_dir):
    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    other = hub_cache.add(tiny_model_dir, REPO, OTHER, refs=("v2",))
    assert resolve_model_path(f"{REPO}@v2") == other
    assert resolve_model_path(f"{REPO}@{OTHER}") == other
    assert resolve_model_path(REPO).name == COMMIT


def test_an_existing_local_folder_wins_over_a_cached_id_of_the_same_shape(
    hub_cache, tiny_model_dir, tmp_path, monkeypatch
):
    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / REPO)
    assert resolve_model_path(REPO) == Path(REPO)


def test_uncached_id_names_the_id_the_cache_and_the_download_command(hub_cache):
    with pytest.raises(HubModelNotCachedError) as err:
        resolve_model_path("acme/asr-large", key="model.path")
    msg = str(err.value)
    assert msg.startswith("model.path 'acme/asr-large': no such local folder")
    assert f"not in the local Hugging Face cache {hub_cache} (from HF_HUB_CACHE)" in msg
    assert "`hf download acme/asr-large`" in msg and "other revisions" not in msg
    assert isinstance(err.value, FileNotFoundError) and err.value.hub_id == HubId("acme/asr-large")


def test_uncached_revision_lists_the_cached_ones_and_the_revision_download(hub_cache, tiny_model_dir):
    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    with pytest.raises(HubModelNotCachedError) as err:
        resolve_model_path(f"{REPO}@v9")
    msg = str(err.value)
    assert "(revision v9)" in msg and f"other revisions of it: {COMMIT}, main" in msg
    assert f"`hf download {REPO} --revision v9`" in msg


def test_cache_folder_follows_hf_home_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    with pytest.raises(HubModelNotCachedError, match=r"cache .*/hf/hub \(from HF_HOME\)"):
        resolve_model_path("acme/asr-large")


@pytest.mark.parametrize("env", [{"HF_HOME": "H"}, {"HF_HUB_CACHE": "C", "HF_HOME": "H"}, {"XDG_CACHE_HOME": "X"}])
def test_cache_folder_is_the_one_huggingface_hub_reads_from_the_same_environment(tmp_path, monkeypatch, env):
    env = {k: str(tmp_path / v) for k, v in env.items()}
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    theirs = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=dict(os.environ)
    ).stdout.strip()
    assert hub_cache_dir() == Path(theirs)


@pytest.mark.parametrize("text", ["/no/such/model", "no/such/model", "./nope", "nope", "a--b/c", "org/.name"])
def test_a_missing_path_that_is_not_an_id_keeps_the_folder_error(hub_cache, text):
    assert parse_hub_id(text) is None
    folder_error = r"^model folder .* does not exist \(model\.path: no such folder"
    with pytest.raises(FileNotFoundError, match=folder_error) as err:
        resolve_model_path(text)
    assert not isinstance(err.value, HubModelNotCachedError)


def test_id_shapes_parse_into_repo_and_revision():
    assert parse_hub_id("Qwen/Qwen2-Audio-7B") == HubId("Qwen/Qwen2-Audio-7B")
    assert parse_hub_id("org/name@refs/pr/1") == HubId("org/name", "refs/pr/1")
    assert str(HubId("org/name", "v2")) == "org/name@v2" and parse_hub_id("org/name@") is None


def test_empty_path_and_a_file_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path is empty"):
        resolve_model_path("")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match="a file, not a model folder"):
        resolve_model_path(tmp_path / "f")


def test_a_cached_snapshot_still_gets_the_safetensors_only_check(hub_cache, tiny_model_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "llm" / "model.safetensors").rename(pickled / "llm" / "pytorch_model.bin")
    hub_cache.add(pickled, REPO, COMMIT)
    with pytest.raises(
        FileNotFoundError,
        match=r"snapshots/0123456789abcdef0123456789abcdef01234567/llm: expected "
        r"an HF causal-LM folder with \*\.safetensors weights",
    ):
        load_audio_llm(resolve_model_path(REPO))


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in Hub endpoint: answers 404 to everything and records each request path."""

    paths: list[str] = []

    def do_GET(self):  # (http.server's naming)
        type(self).paths.append(self.path)
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


CHILD = """
import sys
from policy.models.hub import HubModelNotCachedError, resolve_model_path
print(resolve_model_path(sys.argv[1]).name)
try:
    resolve_model_path("acme/asr-large")
except HubModelNotCachedError:
    print("not cached")
sys.stdout.flush()
from huggingface_hub import HfApi
try:   # the control: huggingface_hub itself does reach this endpoint
    HfApi().model_info("funrl-test/control")
except Exception as exc:
    print(type(exc).__name__)
"""


@pytest.mark.slow  # a child interpreter importing torch and transformers
def test_resolving_makes_no_network_request_even_with_offline_mode_off(hub_cache, tiny_model_dir):
    hub_cache.add(tiny_model_dir, REPO, COMMIT)
    _Recorder.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_CACHE": str(hub_cache),
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, REPO], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == [COMMIT, "not cached", "RepositoryNotFoundError"], proc.stdout
    assert _Recorder.paths and all(p.startswith("/api/models/funrl-test/control") for p in _Recorder.paths)
