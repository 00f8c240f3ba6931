"""The diffusion chat (interactive/diffusion_chat): its endpoints on tiny presets, served in-process; its task.yaml
and interactive gallery entry against the host's schema and URL pattern; (slow) the task's `run` line started as
the host starts it; and (slow) the page in headless Chromium, screenshots taken mid-denoising and at the end."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from interactive.diffusion_chat.engine import ChatError, ChatModel, settings_from
from interactive.diffusion_chat.server import ChatServer
from tests.integration.test_lab_backend import TaskYamlSpec

REPO = Path(__file__).resolve().parents[2]
CHAT = REPO / "interactive" / "diffusion_chat"
GALLERY = REPO / "interactive" / "interactive-gallery.json"
SMALL = {"steps": 8, "max_new_tokens": 16, "block_length": 8}
HELLO = [{"role": "user", "content": "What is 2 + 3?"}]


def serve(chat: ChatModel) -> tuple[ChatServer, str]:
    server = ChatServer(("127.0.0.1", 0), chat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def url(preset_workspace) -> Iterator[str]:
    server, address = serve(ChatModel.load("tiny-llada", workspace=str(preset_workspace)))
    yield address
    server.shutdown()
    server.server_close()


def get(address: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(address, timeout=60) as response:
        return response.status, response.read()


def post(address: str, payload: Any) -> tuple[int, list[dict[str, Any]] | dict[str, Any]]:
    """Status and the server-sent events (a JSON error for a refused request)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(address, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            text = response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    chunks = [chunk for chunk in text.split("\n\n") if chunk]
    assert all(chunk.startswith("data: ") for chunk in chunks), text[:200]
    return 200, [json.loads(chunk[len("data: ") :]) for chunk in chunks]


def test_the_page_and_the_info(url):
    status, page = get(url + "/")
    assert status == 200 and b'id="prompt"' in page and b'id="parallel_threshold"' in page
    info = json.loads(get(url + "/api/info")[1])
    assert info["model"] == "tiny-llada" and info["family"] == "llada" and info["diffusion"]
    assert info["cache_modes"] == ["none", "prefix", "dual", "elastic"]
    assert set(info["defaults"]) == {
        "steps",
        "max_new_tokens",
        "block_length",
        "cache",
        "parallel_threshold",
        "temperature",
    }


def test_an_answer_streams_every_canvas_then_the_text(url):
    status, events = post(url + "/api/chat", {"messages": HELLO, "settings": SMALL})
    assert status == 200
    *steps, done = events
    assert done["event"] == "done" and all(e["event"] == "step" for e in steps)
    assert [(e["block"], e["step"]) for e in steps] == [(b, s) for b in (0, 1) for s in range(4)]
    masks = [sum(kind == "m" for kind, _ in e["cells"]) for e in steps]
    assert masks == [14, 12, 10, 8, 6, 4, 2, 0]  # two tokens a step, the first block before the second
    assert all(kind == "m" for kind, _ in steps[3]["cells"][8:]) and steps[3]["cells"][:8] == steps[4]["cells"][:8]
    assert done["cells"] == steps[-1]["cells"] and len(done["cells"]) == 16
    assert {e["block_length"] for e in events} == {8}
    assert done["nfe"] == 8 and done["tokens"] <= 16 and done["tokens_per_second"] > 0
    shown = "".join(text for kind, text in done["cells"] if kind == "t")
    assert done["text"] == shown.split("\n")[0].strip() or done["text"] in shown


@pytest.mark.parametrize("cache", ["dual", "elastic"])
def test_fast_decoding_settings_reach_the_sampler(url, cache):
    settings = {**SMALL, "cache": cache, "parallel_threshold": 1e-9}
    status, events = post(url + "/api/chat", {"messages": HELLO, "settings": settings})
    assert status == 200 and events[-1]["event"] == "done"
    # every position is confident enough: one pass per block (the elastic cache may add a refresh)
    assert len(events) - 1 == 2 <= events[-1]["nfe"] <= (2 if cache == "dual" else 3)


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        ({"messages": HELLO, "settings": {**SMALL, "steps": 7}}, "steps=7 must be a positive multiple"),
        ({"messages": HELLO, "settings": {**SMALL, "cache": "disk"}}, "cache='disk' is unknown"),
        ({"messages": HELLO, "settings": {"top_k": 3}}, "unknown settings top_k"),
        ({"messages": HELLO, "settings": {"steps": "many"}}, "steps must be a number"),
        ({"messages": HELLO, "settings": {"temperature": 9}}, "temperature must be between 0.0 and 5.0"),
        ({"messages": []}, '"messages"'),
        ({"messages": [{"role": "robot", "content": "x"}]}, '"role"'),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "last message must be the user's"),
        (b"{not json", "not JSON"),
    ],
)
def test_a_bad_request_is_refused_with_what_would_work(url, payload, complaint):
    status, answer = post(url + "/api/chat", payload)
    assert status == 400 and complaint in answer["error"]


def test_unknown_paths(url):
    with pytest.raises(urllib.error.HTTPError) as raised:
        get(url + "/nothing")
    assert raised.value.code == 404
    assert post(url + "/api/nothing", {})[0] == 404


@pytest.mark.parametrize(("preset", "steps"), [("tiny-dream", 8), ("tiny-ar", 1)])
def test_other_families(preset_workspace, preset, steps):
    """Dream denoises the whole answer as one block; a causal LM shows its answer at once (one canvas)."""
    server, address = serve(ChatModel.load(preset, workspace=str(preset_workspace)))
    try:
        status, events = post(address + "/api/chat", {"messages": HELLO, "settings": {**SMALL, "steps": 8}})
        info = json.loads(get(address + "/api/info")[1])
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and events[-1]["event"] == "done"
    assert len(events) - 1 <= steps and {e["block"] for e in events[:-1]} == {0}
    assert info["diffusion"] == (preset != "tiny-ar")
    assert {e["block_length"] for e in events} == {16}  # without a cache Dream denoises the answer as one block


def test_a_trained_adapter(preset_workspace, tmp_path):
    """An adapter folder given as the model loads its base with the adapter; `--adapter` applies one to a model."""
    import torch

    from dlm.lora import apply_lora

    base = ChatModel.load("tiny-llada", workspace=str(preset_workspace))
    adapted = apply_lora(base.loaded.model, base.loaded.family, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # a trained adapter changes the answers; fresh LoRA weights would not
        for name, weight in adapted.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    adapted.save_pretrained(tmp_path / "adapter")
    by_folder = ChatModel.load(str(tmp_path / "adapter"), workspace=str(preset_workspace))
    by_flag = ChatModel.load("tiny-llada", str(tmp_path / "adapter"), workspace=str(preset_workspace))
    assert hasattr(by_folder.loaded.model, "peft_config") and by_flag.info()["model"] == "tiny-llada + adapter"
    settings = settings_from(SMALL)
    answers = [list(chat.stream(HELLO, settings))[-1]["cells"] for chat in (by_folder, by_flag)]
    plain = ChatModel.load("tiny-llada", workspace=str(preset_workspace))
    assert answers[0] == answers[1] != list(plain.stream(HELLO, settings))[-1]["cells"]


def test_settings_from_keeps_the_defaults():
    settings = settings_from({"steps": "16", "parallel_threshold": ""})
    assert settings.steps == 16 and settings.parallel_threshold is None and settings.max_new_tokens == 64
    with pytest.raises(ChatError, match="block_length must be between 1 and 1024"):
        settings_from({"block_length": 0})


# ---- the interactive task ----------------------------------------------------------------------------------------
def app_module(relative: str) -> Any:
    """A module of the app (`schemas/task.py`, ...) where TLAB_APP_DIR names a checkout holding it, else None."""
    source = Path(os.environ.get("TLAB_APP_DIR") or "/nonexistent") / "api" / "transformerlab" / relative
    if not source.is_file():
        return None
    spec = importlib.util.spec_from_file_location("tlab_" + source.stem, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_spec() -> type:
    """The app's own TaskYamlSpec where TLAB_APP_DIR names a checkout, else the tests' copy of it."""
    schemas = app_module("schemas/task.py")
    return schemas.TaskYamlSpec if schemas else TaskYamlSpec


def gallery_entry() -> dict[str, Any]:
    (entry,) = json.loads(GALLERY.read_text())
    return entry


def test_task_yaml_and_gallery_entry():
    task = yaml.safe_load((CHAT / "task.yaml").read_text())
    spec = task_spec().model_validate(task)
    assert spec.run == "exec python diffusion_chat/main.py"  # run from the folder above the copied one
    entry = gallery_entry()
    assert entry["github_repo_dir"] == "interactive/diffusion_chat"
    assert [p["port"] for p in entry["ports"]] == [int(task["envs"]["PORT"])]
    env_vars = {p["env_var"] for p in entry["env_parameters"]}
    assert {"MODEL_NAME", "ADAPTER", "DLM_SOURCE", "NGROK_AUTH_TOKEN"} <= env_vars
    assert {i["value_key"] for i in entry["instructions"]} == {p["value_key"] for p in entry["url_patterns"]}


def url_from_log(log: str) -> str | None:
    """What the app's `get_custom_tunnel_info` finds with the entry's `url_patterns` (re.search, MULTILINE)."""
    (pattern,) = gallery_entry()["url_patterns"]
    match = re.search(pattern["regex"], log, re.MULTILINE)
    return match.group(pattern["group"]) if match else None


def test_the_apps_own_code_reads_the_entry():
    """With the app's `shared/` modules (TLAB_APP_DIR): the job's URL as its tunnel parser finds it in our log
    line, and the remote command (an ngrok tunnel to the chat's port, then the task's run)."""
    parser, gallery = app_module("shared/tunnel_parser.py"), app_module("shared/interactive_gallery_utils.py")
    if parser is None or gallery is None:
        pytest.skip("TLAB_APP_DIR does not name a transformerlab-app checkout with api/transformerlab/shared")
    entry = gallery_entry()
    log = "loading tiny-llada\nRunning on local URL: http://127.0.0.1:7860\n"
    info = parser.get_tunnel_info(log, entry["interactive_type"], entry["url_patterns"])
    assert info["chat_url"] == url_from_log(log) == "http://127.0.0.1:7860" and info["is_ready"]
    assert gallery.find_interactive_gallery_entry([entry], "diffusion_chat") is entry
    run = yaml.safe_load((CHAT / "task.yaml").read_text())["run"]
    command, _ = gallery.resolve_interactive_command(entry, "remote", run)
    assert "addr: 7860" in command and command.endswith(f"; {run}")
    assert gallery.resolve_interactive_command(entry, "local", run) == (run, None)


@pytest.fixture
def started(preset_workspace, tmp_path) -> Iterator[str]:
    """The task's `run` line in a copy of its folder (as the host copies it), tiny-llada, on a free port."""
    shutil.copytree(CHAT, tmp_path / "diffusion_chat")
    task = yaml.safe_load((CHAT / "task.yaml").read_text())
    env = {**os.environ, **task["envs"], "PORT": "0", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = task["run"].replace("exec python", f"exec {sys.executable}") + f" --workspace {preset_workspace}"
    process = subprocess.Popen(
        ["bash", "-c", command], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log = ""
    try:
        for line in process.stdout:
            log += line
            if url_from_log(log):
                break
        address = url_from_log(log)
        assert address, f"the chat printed no URL:\n{log}"
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_the_task_run_line_serves_the_chat(started):
    status, events = post(started + "/api/chat", {"messages": HELLO, "settings": SMALL})
    assert status == 200 and events[-1]["event"] == "done" and len(events) == 9


CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE_MODULES = Path(os.environ.get("CHAT_NODE_MODULES") or REPO / "tests" / "browser" / "node_modules")


@pytest.mark.slow
def test_the_page_in_headless_chromium(started, tmp_path):
    """Sends a prompt from the page and takes screenshots while it is denoised and once it is done."""
    if not Path(CHROMIUM).is_file() or shutil.which("node") is None:
        pytest.skip("needs node and Chromium (CHROMIUM)")
    if not (NODE_MODULES / "playwright-core").is_dir():
        pytest.skip("needs playwright-core: cd tests/browser && npm install (or set CHAT_NODE_MODULES)")
    out = Path(os.environ.get("CHAT_SCREENSHOTS") or tmp_path)
    script = REPO / "tests" / "browser" / "check_chat.mjs"
    env = {**os.environ, "CHAT_NODE_MODULES": str(NODE_MODULES), "CHROMIUM": CHROMIUM}
    done = subprocess.run(
        ["node", str(script), started, str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["masked_mid"] > 0 and report["revealed_mid"] > 0, report  # caught mid-denoising
    assert report["masked_end"] == 0 and report["tokens_per_second"], report
    assert (out / "chat-denoising.png").is_file() and (out / "chat-done.png").is_file()
