"""fetch_repo: real clones of the demo zoo's local git repositories (and a local HTTP server)."""

from __future__ import annotations

import base64
import functools
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import git
import pytest

from wizard.services.errors import WizardError
from wizard.services.fetch import FetchProgress, fetch_repo, find_lfs_pointers

ASSETS = Path(__file__).resolve().parents[1] / "wizard" / "demo" / "assets"
pytestmark = pytest.mark.slow


class Events(list):
    """A progress callback that records every event."""

    def __call__(self, event: FetchProgress) -> None:
        assert isinstance(event, FetchProgress)
        self.append(event)

    def text(self) -> str:
        return "\n".join(f"{e.op} {e.message} {e.file}" for e in self)


def _head(path: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_clone_reports_progress_and_lfs_files(zoo, tmp_path):
    events = Events()
    dest = tmp_path / "weights" / "tiny-llava"
    res = fetch_repo(zoo.models["tiny-llava"]["weights_repo"], dest, progress=events)

    assert res.path == dest.resolve() and not res.resumed
    assert res.commit == zoo.models["tiny-llava"]["weights_commit"] == _head(dest)
    assert res.branch == "main"
    assert any(e.max and e.max > 0 and e.op in ("counting", "compressing", "receiving") for e in events)
    assert (dest / "config.json").read_bytes() == (ASSETS / "tiny-llava" / "config.json").read_bytes()
    # the weights are real content, never LFS pointers, and the clone is clean
    assert (dest / "model.safetensors").read_bytes() == (ASSETS / "tiny-llava" / "model.safetensors").read_bytes()
    assert find_lfs_pointers(dest) == []
    assert not git.Repo(dest).is_dirty(untracked_files=True)
    if zoo.lfs:
        assert res.lfs_files == ["model.safetensors"]
        lfs_events = [e for e in events if e.op == "lfs"]
        assert {e.file for e in lfs_events if e.file} == {"model.safetensors"}
        assert any("model.safetensors" in e.message for e in lfs_events)
        assert lfs_events[-1].cur == lfs_events[-1].max == 1
    else:
        assert res.lfs_files == []


def test_clone_reports_every_lfs_file_of_a_multi_file_repo(zoo, tmp_path):
    if not zoo.lfs:
        pytest.skip("the zoo was built without git-lfs")
    events = Events()
    dest = tmp_path / "vila"
    res = fetch_repo(zoo.models["tiny-vila"]["weights_repo"], dest, progress=events)
    want = ["llm/model.safetensors", "mm_projector/model.safetensors", "vision_tower/model.safetensors"]
    assert res.lfs_files == want
    assert {e.file for e in events if e.op == "lfs" and e.file} == set(want)
    for rel in want:
        assert (dest / rel).read_bytes() == (ASSETS / "tiny-vila" / rel).read_bytes()


def test_refetch_of_an_existing_clone_resumes_and_fast_forwards(zoo, tmp_path):
    # an upstream we may change: a clone of the zoo's code repository
    upstream = tmp_path / "upstream"
    git.Repo.clone_from(zoo.models["tiny-vila"]["code_repo"], upstream)
    dest = tmp_path / "clone"
    first = fetch_repo(upstream, dest)
    assert not first.resumed and first.commit == zoo.models["tiny-vila"]["code_head"]

    again = fetch_repo(upstream, dest)
    assert again.resumed and again.commit == first.commit and again.path == first.path

    (upstream / "NEWS.md").write_text("new upstream work\n")
    up = git.Repo(upstream)
    up.index.add(["NEWS.md"])
    new_sha = up.index.commit("Upstream moves on").hexsha
    events = Events()
    third = fetch_repo(str(upstream), dest, progress=events)
    assert third.resumed and third.commit == new_sha == _head(dest) and third.branch == "main"
    assert (dest / "NEWS.md").read_text() == "new upstream work\n"
    assert any(e.op == "fetch" for e in events)


@pytest.mark.parametrize("how", ["sha", "short-sha", "tag"])
def test_commit_pinning(zoo, tmp_path, how):
    entry = zoo.models["tiny-vila"]
    commit = {"sha": entry["code_commit"], "short-sha": entry["code_commit"][:8], "tag": "v0.1.0"}[how]
    dest = tmp_path / "code"
    res = fetch_repo(entry["code_repo"], dest, commit=commit)
    assert res.commit == entry["code_commit"] == _head(dest)
    assert len(res.commit) == 40 and res.branch is None  # detached at the pin
    assert (dest / "pyproject.toml").exists()
    assert not (dest / "CHANGELOG.md").exists()  # added by the later commit


def test_unpinned_clone_is_at_the_head_and_a_pin_on_refetch_moves_it(zoo, tmp_path):
    entry = zoo.models["tiny-vila"]
    dest = tmp_path / "code"
    res = fetch_repo(entry["code_repo"], dest)
    assert res.commit == entry["code_head"] and (dest / "CHANGELOG.md").exists()
    pinned = fetch_repo(entry["code_repo"], dest, commit="v0.1.0")
    assert pinned.resumed and pinned.commit == entry["code_commit"] == _head(dest)
    assert not (dest / "CHANGELOG.md").exists()
    back = fetch_repo(entry["code_repo"], dest)  # no pin again: back to the default branch
    assert back.commit == entry["code_head"] and back.branch == "main"


def test_unknown_commit_names_it_and_lists_refs(zoo, tmp_path):
    with pytest.raises(WizardError) as ei:
        fetch_repo(zoo.models["tiny-vila"]["code_repo"], tmp_path / "code", commit="v9.9.9")
    e = ei.value
    assert "v9.9.9" in e.message and "not found" in e.message
    assert "v0.1.0" in e.fix and "main" in e.fix
    assert "\n" not in str(e)


def test_dest_holding_another_repository_is_refused(zoo, tmp_path):
    dest = tmp_path / "dest"
    fetch_repo(zoo.models["tiny-vila"]["code_repo"], dest)
    marker = dest / "pyproject.toml"
    before = marker.read_bytes()
    with pytest.raises(WizardError) as ei:
        fetch_repo(zoo.models["tiny-llava"]["weights_repo"], dest)
    assert str(dest) in ei.value.message and "already holds a clone" in ei.value.message
    assert "another destination" in ei.value.fix
    assert marker.read_bytes() == before  # untouched

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    with pytest.raises(WizardError, match="not empty and is not a git clone"):
        fetch_repo(zoo.models["tiny-llava"]["weights_repo"], plain)
    assert (plain / "notes.txt").read_text() == "mine"


def test_bad_source_paths(tmp_path):
    missing = tmp_path / "no-such-repo"
    with pytest.raises(WizardError) as ei:
        fetch_repo(missing, tmp_path / "d1")
    assert str(missing) in ei.value.message and "does not exist" in ei.value.message and ei.value.fix
    not_git = tmp_path / "not-git"
    not_git.mkdir()
    with pytest.raises(WizardError) as ei:
        fetch_repo(not_git, tmp_path / "d2")
    assert str(not_git) in ei.value.message and "not a git repository" in ei.value.message
    assert not (tmp_path / "d1").exists() and not (tmp_path / "d2").exists()


def test_lfs_off_on_an_lfs_repository_stops_and_leaves_no_pointers(zoo, tmp_path):
    if not zoo.lfs:
        pytest.skip("the zoo was built without git-lfs")
    dest = tmp_path / "w" / "tiny-llava"
    with pytest.raises(WizardError) as ei:
        fetch_repo(zoo.models["tiny-llava"]["weights_repo"], dest, lfs=False)
    e = ei.value
    assert "git-lfs" in e.message and "model.safetensors" in e.message
    assert "apt-get install git-lfs" in e.fix and "brew install git-lfs" in e.fix and "git lfs install" in e.fix
    assert not dest.exists()  # nothing kept: no pointer files posing as weights
    assert not (tmp_path / "w").exists()


def test_missing_git_lfs_binary_is_detected(zoo, tmp_path, monkeypatch):
    if not zoo.lfs:
        pytest.skip("the zoo was built without git-lfs")
    # a PATH where git exists but git-lfs does not
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))
    dest = tmp_path / "existing-empty"
    dest.mkdir()
    with pytest.raises(WizardError) as ei:
        fetch_repo(zoo.models["tiny-vila"]["weights_repo"], dest)
    assert "git-lfs is not installed" in ei.value.message
    assert "apt-get install git-lfs" in ei.value.fix
    assert dest.is_dir() and list(dest.iterdir()) == []  # it existed (empty) before: emptied, not removed
    monkeypatch.undo()
    res = fetch_repo(zoo.models["tiny-vila"]["weights_repo"], dest)  # with git-lfs back: works
    assert len(res.lfs_files) == 3 and find_lfs_pointers(dest) == []


@pytest.mark.parametrize("trigger", ["first-event", "first-counter"])
def test_cancel_during_clone_removes_dest(zoo, tmp_path, trigger):
    cancel = threading.Event()
    seen = Events()

    def progress(e):
        seen(e)
        if trigger == "first-event" or (e.max or 0) > 0:
            cancel.set()

    dest = tmp_path / "new" / "tiny-vila"
    with pytest.raises(WizardError) as ei:
        fetch_repo(zoo.models["tiny-vila"]["weights_repo"], dest, progress=progress, cancelled=cancel)
    assert ei.value.message == "clone cancelled"
    assert seen and not dest.exists() and not (tmp_path / "new").exists()
    assert not any(e.op == "lfs" for e in seen)  # stopped before the LFS download


def test_cancel_with_a_callable(zoo, tmp_path):
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(WizardError, match="clone cancelled"):
        fetch_repo(zoo.models["tiny-vila"]["code_repo"], tmp_path / "c", cancelled=cancelled)
    assert not (tmp_path / "c").exists()


def test_find_lfs_pointers(tmp_path):
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 12345\n"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.safetensors").write_bytes(pointer)
    (tmp_path / "real.bin").write_bytes(b"\x00" * 2048)
    (tmp_path / "notes.txt").write_text("version 1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "ignored").write_bytes(pointer)
    big = tmp_path / "big.txt"
    big.write_bytes(pointer + b"x" * 2000)  # over the 1024-byte pointer limit: content, not a pointer
    assert find_lfs_pointers(tmp_path) == ["sub/w.safetensors"]


# ---------------------------------------------------------------------------------------------
# credentials


def test_token_in_url_never_appears_in_errors_or_progress(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    events = Events()
    url = "https://user:hf_SECRETTOKEN123456@localhost/x"
    with pytest.raises(WizardError) as ei:
        fetch_repo(url, tmp_path / "x", progress=events)
    e = ei.value
    everything = " ".join([str(e), e.message, e.fix, e.details, repr(e), events.text()])
    assert "SECRETTOKEN" not in everything and "hf_SECRET" not in everything
    assert "localhost" in e.message and "failed" in e.message
    assert not (tmp_path / "x").exists()


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder (a dumb-HTTP git repository) and records the Authorization headers."""

    seen: list

    def do_GET(self):
        self.seen.append(self.headers.get("Authorization"))
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_repo(zoo, tmp_path):
    """The zoo's code repository served over (dumb) HTTP from 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    bare = served / "code.git"
    subprocess.run(["git", "clone", "-q", "--bare", zoo.models["tiny-vila"]["code_repo"], str(bare)], check=True)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    handler = type("H", (_RecordingHandler,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_are_sent_as_a_header_but_never_stored(zoo, tmp_path, http_repo, monkeypatch):
    hostport, seen = http_repo
    monkeypatch.delenv("HF_TOKEN", raising=False)
    events = Events()
    dest = tmp_path / "code"
    res = fetch_repo(f"http://alice:s3cr3t-T0KEN@{hostport}/code.git", dest, progress=events, commit="v0.1.0")
    assert res.commit == zoo.models["tiny-vila"]["code_commit"] == _head(dest)
    expected = "Basic " + base64.b64encode(b"alice:s3cr3t-T0KEN").decode()
    assert seen and all(h == expected for h in seen)  # every request carried the credentials
    stored = (dest / ".git" / "config").read_text()
    assert f"url = http://{hostport}/code.git" in stored and "s3cr3t" not in stored and "alice" not in stored
    assert "s3cr3t" not in events.text() and "s3cr3t" not in repr(res)
    # fetching again with the same URL resumes (the remote is the same, credentials aside)
    seen.clear()
    again = fetch_repo(f"http://alice:s3cr3t-T0KEN@{hostport}/code.git", dest, commit="main")
    assert again.resumed and again.commit == zoo.models["tiny-vila"]["code_head"]
    assert seen and all(h == expected for h in seen)


def test_hf_token_goes_only_to_huggingface(monkeypatch):
    from wizard.services.fetch import _resolve_source

    monkeypatch.setenv("HF_TOKEN", "hf_ENVTOKEN0123456789")
    src = _resolve_source("https://huggingface.co/org/model")
    assert src.url == "https://huggingface.co/org/model"
    assert src.header == "Authorization: Bearer hf_ENVTOKEN0123456789" and src.scope == "https://huggingface.co/"
    assert "ENVTOKEN" not in src.display
    other = _resolve_source("https://example.com/org/model")
    assert other.header is None
    explicit = _resolve_source("https://me:hf_URLTOKEN0123456789@huggingface.co/org/model")
    assert explicit.url == "https://huggingface.co/org/model"
    assert explicit.header == "Authorization: Bearer hf_URLTOKEN0123456789"
    assert "URLTOKEN" not in explicit.display and "me@" not in explicit.display


def test_env_token_is_redacted_from_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "plainsecretvalue42")
    url = "https://localhost/plainsecretvalue42/repo"  # even a token pasted into the path is masked
    with pytest.raises(WizardError) as ei:
        fetch_repo(url, tmp_path / "x")
    assert "plainsecretvalue42" not in str(ei.value) + ei.value.details
    assert "***" in ei.value.message
    assert os.environ["HF_TOKEN"] == "plainsecretvalue42"


@pytest.mark.parametrize("resumed", [False, True])
def test_an_lfs_object_that_cannot_be_fetched_leaves_no_pointer_named_as_weights(tmp_path, resumed):
    """A committed LFS pointer whose object is on no server: fetch fails in one line, and no
    132-byte pointer stays behind as ``model.safetensors`` (a fresh clone is removed; a resumed one
    loses the pointer)."""
    from wizard.services.fetch import have_git_lfs

    if not have_git_lfs():
        pytest.skip("git-lfs is not installed")
    src = tmp_path / "src"
    src.mkdir()
    repo = git.Repo.init(src, initial_branch="main")
    with repo.config_writer() as cw:
        cw.set_value("user", "name", "t").set_value("user", "email", "t@example.com")
    (src / "config.json").write_text("{}")
    repo.git.add("config.json")
    repo.git.commit("-m", "config")
    dest = tmp_path / "w" / "m"
    if resumed:
        fetch_repo(str(src), dest)
    (src / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    oid = "a" * 64
    (src / "model.safetensors").write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 4096\n")
    repo.git.add(".gitattributes")
    repo.git.execute(["git", "-c", "filter.lfs.clean=cat", "-c", "filter.lfs.required=false", "add",
                      "model.safetensors"])
    repo.git.commit("-m", "weights")
    with pytest.raises(WizardError) as ei:
        fetch_repo(str(src), dest, commit=repo.head.commit.hexsha)
    assert "\n" not in str(ei.value) and "model.safetensors" in str(ei.value)
    if resumed:
        assert "pointer files were removed" in str(ei.value) and (dest / "config.json").is_file()
        assert not (dest / "model.safetensors").exists()
    else:
        assert "nothing was kept" in str(ei.value) and not dest.exists()
