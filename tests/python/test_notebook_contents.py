"""Notebooks next to the data (issue 22, points 3 and 4), against a real `meridian serve`
over the demo survey (objects, images, spectra) with three users and a 1 MiB storage quota:

- `meridian_hub.contents`: JupyterLab's contents manager over the user's storage. What it
  saves is read back with the plain storage API (Data Lab's /storage wire) and with the
  `meridian vos` command line, and what those write shows in it; directories, rename,
  delete, checkpoints, a save over the quota (refused with the quota message, the previous
  version kept), another user's files out of reach, groups' spaces; and the same through a
  real `jupyter server`'s REST API.
- `meridian`, the notebook helper: query/tap/sia/ssa compared with direct HTTP requests
  to the service (not with itself), the vos and mydb helpers against the storage API, and
  the service's own error messages.

Nothing of Meridian is mocked: every call is HTTP on loopback to the real binary."""

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import requests
from tornado.web import HTTPError

from conftest import ROOT, Server, add_users, personal_env, run, storage_get, storage_put, token_of

sys.path.insert(0, str(ROOT / "notebooks" / "python"))

import meridian  # noqa: E402
from meridian import Client, MeridianError  # noqa: E402
from meridian_hub.contents import AsyncMeridianContentsManager, MeridianContentsManager  # noqa: E402

USERS = ["nina", "omar", "pia"]


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    """The demo survey (and the Gaia sample) served with a 1 MiB storage quota; yields the
    base URL and each user's token."""
    d = tmp_path_factory.mktemp("notebooks")
    data = d / "data"
    run("demo", "--objects", 3000, "--no-serve", "--quiet", data_dir=data)
    os.symlink(store / "catalogs" / "gaia", data / "catalogs" / "gaia")
    env = personal_env(d, MERIDIAN_STORAGE__QUOTA_MIB="1")
    add_users(data, env, *USERS)
    with Server(data, env=env) as s:
        base = s.url.removesuffix("/tap")
        yield base, {u: token_of(base, u) for u in USERS}


def manager(service, user, cls=MeridianContentsManager, **kw):
    base, tokens = service
    return cls(meridian_url=base, meridian_token=tokens[user], **kw)


def dl(service, user):
    """A requests session of `user` as Data Lab's client sends the token."""
    s = requests.Session()
    s.headers["X-DL-AuthToken"] = service[1][user]
    return s


def cli(service, user, tmp_path, *args, **kw):
    """`meridian <args>` as a client of the service, logged in as `user`."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / f"config-{user}"), "MERIDIAN_SERVICE": service[0]}
    if not (tmp_path / f"config-{user}" / "meridian" / "login.json").exists():
        run("login", user, input=f"{user}-password\n", env=env)
    return run(*args, env=env, **kw)


def notebook(*sources, pad=0):
    """A notebook with a code cell per source (and `pad` bytes of output in the last)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for s in sources:
        nb.cells.append(nbformat.v4.new_code_cell(s))
    if pad:
        nb.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * pad)]
    return nb


def nb_model(nb):
    return {"type": "notebook", "content": nb}


def sources(nb):
    return [c.source for c in nb.cells]


def status_of(excinfo):
    return excinfo.value.status_code


# -- the contents manager -------------------------------------------------------------------


def test_a_notebook_saved_in_jupyterlab_is_a_file_in_storage(service, tmp_path):
    cm = manager(service, "nina")
    saved = cm.save({"type": "directory"}, "analysis")
    assert saved["type"] == "directory" and saved["path"] == "analysis"
    nb = notebook("import meridian", "t = meridian.query('SELECT TOP 5 * FROM demo_object')")
    m = cm.save(nb_model(nb), "analysis/cmd.ipynb")
    assert m["type"] == "notebook" and m["name"] == "cmd.ipynb" and m["content"] is None
    assert m["writable"] and m["size"] > 0 and m["last_modified"].year >= 2024

    # The plain storage API reads the same notebook.
    r = storage_get(dl(service, "nina"), service[0], "vos://analysis/cmd.ipynb")
    assert r.status_code == 200
    assert sources(nbformat.reads(r.text, as_version=4)) == sources(nb)
    assert int(r.headers["Content-Length"]) == m["size"]
    # ... and so does `meridian vos get`.
    out = cli(service, "nina", tmp_path, "vos", "get", "analysis/cmd.ipynb", "-").stdout
    assert sources(nbformat.reads(out, as_version=4)) == sources(nb)
    # The node is a DataNode of the user's VOSpace home.
    r = requests.get(f"{service[0]}/vospace/nodes/nina/analysis/cmd.ipynb",
                     headers={"Authorization": f"Bearer {service[1]['nina']}"})
    assert r.status_code == 200 and 'xsi:type="vos:DataNode"' in r.text
    assert 'uri="vos://meridian!vospace/nina/analysis/cmd.ipynb"' in r.text
    # The first save left a checkpoint, a hidden file in storage, not listed.
    r = storage_get(dl(service, "nina"), service[0], "vos://analysis/.ipynb_checkpoints/cmd-checkpoint.ipynb")
    assert r.status_code == 200 and sources(nbformat.reads(r.text, as_version=4)) == sources(nb)
    listing = cm.get("analysis")
    assert [c["name"] for c in listing["content"]] == ["cmd.ipynb"]
    assert listing["content"][0]["type"] == "notebook"

    # Read back through the manager: the same notebook, as JSON.
    got = cm.get("analysis/cmd.ipynb")
    assert got["format"] == "json" and sources(got["content"]) == sources(nb)
    assert got["last_modified"] == m["last_modified"]
    hashed = cm.get("analysis/cmd.ipynb", content=False, require_hash=True)
    assert hashed["hash_algorithm"] == "sha256" and len(hashed["hash"]) == 64
    # A second save replaces the file.
    nb.cells.append(nbformat.v4.new_markdown_cell("# Colour-magnitude diagram"))
    cm.save(nb_model(nb), "analysis/cmd.ipynb")
    r = storage_get(dl(service, "nina"), service[0], "vos://analysis/cmd.ipynb")
    assert sources(nbformat.reads(r.text, as_version=4))[-1] == "# Colour-magnitude diagram"


def test_files_written_through_the_api_show_in_jupyterlab(service, tmp_path):
    s, base = dl(service, "nina"), service[0]
    assert s.get(f"{base}/storage/mkdir", params={"dir": "vos://inbox"}).status_code == 201
    nb = notebook("print('from the storage API')")
    assert storage_put(s, base, "vos://inbox/from_api.ipynb", nbformat.writes(nb).encode()).status_code == 201
    text = "ra,dec\n10.5,-3.25\n"
    assert storage_put(s, base, "vos://inbox/table.csv", text.encode()).status_code == 201
    blob = bytes(range(256)) * 8  # not UTF-8
    assert storage_put(s, base, "vos://inbox/blob.bin", blob).status_code == 201
    local = tmp_path / "from_cli.txt"
    local.write_text("written with `meridian vos put`\n")
    cli(service, "nina", tmp_path, "vos", "put", str(local), "--to", "vos://inbox")

    cm = manager(service, "nina")
    top = cm.get("")
    assert {"analysis", "inbox"} <= {c["name"] for c in top["content"]}
    listing = {c["name"]: c for c in cm.get("inbox")["content"]}
    assert sorted(listing) == ["blob.bin", "from_api.ipynb", "from_cli.txt", "table.csv"]
    assert listing["from_api.ipynb"]["type"] == "notebook"
    assert listing["blob.bin"]["type"] == "file" and listing["blob.bin"]["size"] == len(blob)
    assert listing["table.csv"]["mimetype"] == "text/csv"

    assert sources(cm.get("inbox/from_api.ipynb")["content"]) == sources(nb)
    t = cm.get("inbox/table.csv")
    assert (t["format"], t["content"]) == ("text", text)
    b = cm.get("inbox/blob.bin")
    assert b["format"] == "base64" and base64.b64decode(b["content"]) == blob
    assert cm.get("inbox/from_cli.txt")["content"] == local.read_text()
    # A notebook opened as a file (JupyterLab's editor) is its JSON text.
    as_text = cm.get("inbox/from_api.ipynb", type="file", format="text")
    assert as_text["type"] == "file" and nbformat.reads(as_text["content"], as_version=4).cells
    with pytest.raises(HTTPError) as e:
        cm.get("inbox/blob.bin", format="text")
    assert status_of(e) == 400 and "UTF-8" in e.value.log_message

    # Text and base64 files saved in JupyterLab are the same bytes for the API.
    cm.save({"type": "file", "format": "text", "content": "é ünïcode\n"}, "inbox/notes.md")
    cm.save({"type": "file", "format": "base64", "content": base64.b64encode(blob[:100]).decode()},
            "inbox/small.bin")
    assert storage_get(s, base, "vos://inbox/notes.md").content == "é ünïcode\n".encode()
    assert storage_get(s, base, "vos://inbox/small.bin").content == blob[:100]


def test_directories(service):
    cm = manager(service, "nina")
    assert cm.dir_exists("") and not cm.file_exists("")
    made = cm.new_untitled(path="", type="directory")
    assert made["name"] == "Untitled Folder" and cm.dir_exists("Untitled Folder")
    cm.save({"type": "directory"}, "Untitled Folder/deeper")
    assert cm.dir_exists("Untitled Folder/deeper") and not cm.file_exists("Untitled Folder/deeper")
    # Saving a directory that is there is no error; a file in the way is.
    cm.save({"type": "directory"}, "Untitled Folder/deeper")
    cm.save({"type": "file", "format": "text", "content": "x"}, "Untitled Folder/f.txt")
    with pytest.raises(HTTPError) as e:
        cm.save({"type": "directory"}, "Untitled Folder/f.txt")
    assert status_of(e) == 400
    # The storage API sees containers.
    r = dl(service, "nina").get(f"{service[0]}/storage/isdir", params={"name": "vos://Untitled Folder/deeper"})
    assert r.text == "True"
    # A new notebook in it gets a free name.
    nb1 = cm.new_untitled(path="Untitled Folder", type="notebook")
    nb2 = cm.new_untitled(path="Untitled Folder", type="notebook")
    assert (nb1["name"], nb2["name"]) == ("Untitled.ipynb", "Untitled1.ipynb")
    assert cm.get(nb1["path"])["content"].nbformat == 4

    with pytest.raises(HTTPError) as e:
        cm.get("Untitled Folder", type="file")
    assert status_of(e) == 400
    with pytest.raises(HTTPError) as e:
        cm.get("Untitled Folder/f.txt", type="directory")
    assert status_of(e) == 400
    with pytest.raises(HTTPError) as e:
        cm.get("no/such/thing.ipynb")
    assert status_of(e) == 404 and "NodeNotFound" in e.value.log_message
    with pytest.raises(HTTPError) as e:
        cm.save({"type": "file", "format": "text", "content": "x"}, "no/such/file.txt")
    assert status_of(e) == 404 and "container is missing" in e.value.log_message

    # Deleting: a directory with files is refused, an empty one goes.
    with pytest.raises(HTTPError) as e:
        cm.delete("Untitled Folder")
    assert status_of(e) == 400 and "not empty" in e.value.log_message
    cm.delete("Untitled Folder/deeper")
    assert not cm.dir_exists("Untitled Folder/deeper")
    # Hidden files are not listed (allow_hidden shows them).
    cm.save({"type": "file", "format": "text", "content": "secret"}, "Untitled Folder/.hidden")
    assert ".hidden" not in [c["name"] for c in cm.get("Untitled Folder")["content"]]
    assert cm.is_hidden("Untitled Folder/.hidden") and not cm.is_hidden("Untitled Folder/f.txt")
    shown = manager(service, "nina", allow_hidden=True).get("Untitled Folder")["content"]
    assert ".hidden" in [c["name"] for c in shown]
    whole = manager(service, "nina", always_delete_dir=True)
    whole.delete("Untitled Folder")
    assert not cm.exists("Untitled Folder")
    r = dl(service, "nina").get(f"{service[0]}/storage/stat", params={"name": "vos://Untitled Folder"})
    assert r.status_code == 404


def test_rename_and_delete(service):
    cm = manager(service, "nina")
    s, base = dl(service, "nina"), service[0]
    cm.save({"type": "directory"}, "moves")
    nb = notebook("1 + 1")
    cm.save(nb_model(nb), "moves/a.ipynb")
    assert cm.list_checkpoints("moves/a.ipynb")
    cm.rename("moves/a.ipynb", "moves/b.ipynb")
    assert not cm.exists("moves/a.ipynb") and cm.file_exists("moves/b.ipynb")
    assert storage_get(s, base, "vos://moves/a.ipynb").status_code == 404
    assert sources(nbformat.reads(storage_get(s, base, "vos://moves/b.ipynb").text, as_version=4)) == ["1 + 1"]
    # Its checkpoint moved with it.
    assert cm.list_checkpoints("moves/b.ipynb") and not cm.list_checkpoints("moves/a.ipynb")
    assert storage_get(s, base, "vos://moves/.ipynb_checkpoints/b-checkpoint.ipynb").status_code == 200

    # Onto a file that exists: refused, both kept.
    cm.save({"type": "file", "format": "text", "content": "other"}, "moves/c.txt")
    with pytest.raises(HTTPError) as e:
        cm.rename("moves/c.txt", "moves/b.ipynb")
    assert status_of(e) == 409
    assert cm.get("moves/c.txt")["content"] == "other" and cm.file_exists("moves/b.ipynb")
    # A directory moves with everything in it, into another directory.
    cm.save({"type": "directory"}, "archive")
    cm.rename("moves", "archive/moves-2024")
    assert not cm.exists("moves")
    assert sorted(c["name"] for c in cm.get("archive/moves-2024")["content"]) == ["b.ipynb", "c.txt"]
    assert storage_get(s, base, "vos://archive/moves-2024/c.txt").text == "other"
    with pytest.raises(HTTPError) as e:
        cm.rename("nothing-here.txt", "x.txt")
    assert status_of(e) == 404

    # Delete: the file and its checkpoint are gone from storage.
    cm.delete("archive/moves-2024/b.ipynb")
    assert not cm.exists("archive/moves-2024/b.ipynb")
    assert storage_get(s, base, "vos://archive/moves-2024/b.ipynb").status_code == 404
    assert storage_get(s, base, "vos://archive/moves-2024/.ipynb_checkpoints/b-checkpoint.ipynb").status_code == 404
    with pytest.raises(HTTPError) as e:
        cm.delete("archive/moves-2024/b.ipynb")
    assert status_of(e) == 404
    # What the API removes is gone for the manager too.
    assert s.get(f"{base}/storage/rm", params={"file": "vos://archive/moves-2024/c.txt"}).status_code == 204
    assert not cm.file_exists("archive/moves-2024/c.txt")


def test_checkpoints(service):
    cm = manager(service, "nina")
    cm.save(nb_model(notebook("version = 1")), "cp.ipynb")
    first = cm.list_checkpoints("cp.ipynb")
    assert [c["id"] for c in first] == ["checkpoint"]
    cm.save(nb_model(notebook("version = 2")), "cp.ipynb")
    # Restoring brings back what the checkpoint holds (version 1, from the first save).
    cm.restore_checkpoint("checkpoint", "cp.ipynb")
    assert sources(cm.get("cp.ipynb")["content"]) == ["version = 1"]
    cm.save(nb_model(notebook("version = 3")), "cp.ipynb")
    made = cm.create_checkpoint("cp.ipynb")
    assert made["id"] == "checkpoint"
    cm.save(nb_model(notebook("version = 4")), "cp.ipynb")
    cm.restore_checkpoint("checkpoint", "cp.ipynb")
    assert sources(cm.get("cp.ipynb")["content"]) == ["version = 3"]
    cm.delete_checkpoint("checkpoint", "cp.ipynb")
    assert cm.list_checkpoints("cp.ipynb") == []
    with pytest.raises(HTTPError) as e:
        cm.restore_checkpoint("checkpoint", "cp.ipynb")
    assert status_of(e) == 404


def test_a_save_over_the_quota_is_refused_and_the_old_version_kept(service):
    cm = manager(service, "pia")
    s, base = dl(service, "pia"), service[0]
    v1 = notebook("small = True")
    cm.save(nb_model(v1), "big.ipynb")
    before = storage_get(s, base, "vos://big.ipynb").content
    # 1.2 MiB of output: more than the 1 MiB quota of the whole space.
    v2 = notebook("small = False", pad=1_200_000)
    with pytest.raises(HTTPError) as e:
        cm.save(nb_model(v2), "big.ipynb")
    assert status_of(e) == 413
    message = e.value.log_message
    assert "quota" in message and "pia" in message, message
    # The service says the same to a plain upload of those bytes.
    r = storage_put(s, base, "vos://copy.ipynb", nbformat.writes(v2).encode())
    assert r.status_code == 413 and "quota" in r.text
    # The previous version is kept, byte for byte, and reads as before.
    assert storage_get(s, base, "vos://big.ipynb").content == before
    assert sources(cm.get("big.ipynb")["content"]) == ["small = True"]
    # A new file over the quota leaves nothing.
    with pytest.raises(HTTPError) as e:
        cm.save(nb_model(v2), "new.ipynb")
    assert status_of(e) == 413 and "quota" in e.value.log_message
    assert not cm.exists("new.ipynb")
    assert storage_get(s, base, "vos://new.ipynb").status_code == 404
    # Under the quota again, saves go through.
    cm.save(nb_model(notebook("small = 'again'")), "big.ipynb")
    assert sources(cm.get("big.ipynb")["content"]) == ["small = 'again'"]


def test_another_users_files_are_out_of_reach(service):
    nina = manager(service, "nina")
    nina.save(nb_model(notebook("private = 1")), "private.ipynb")
    omar = manager(service, "omar")
    names = [c["name"] for c in omar.get("")["content"]]
    assert "private.ipynb" not in names and "analysis" not in names
    for path in ["private.ipynb", "analysis/cmd.ipynb"]:
        assert not omar.exists(path) and not omar.file_exists(path)
        with pytest.raises(HTTPError) as e:
            omar.get(path)
        assert status_of(e) == 404
    # Not as a group either: nina's home is no space of omar's.
    for path in ["groups/nina/private.ipynb", "groups/nina"]:
        assert not omar.exists(path)
        with pytest.raises(HTTPError) as e:
            omar.get(path)
        assert status_of(e) == 404
    # Omar's own file of the same name is his, and nina's is untouched.
    omar.save(nb_model(notebook("mine = 2")), "private.ipynb")
    assert sources(nina.get("private.ipynb")["content"]) == ["private = 1"]
    assert sources(omar.get("private.ipynb")["content"]) == ["mine = 2"]
    # The helper's own calls with omar's token: nina's node does not exist for him.
    c = Client(service[0], service[1]["omar"])
    with pytest.raises(MeridianError) as e:
        c.read_bytes("nina/private.ipynb")
    assert e.value.status == 404 and "NodeNotFound" in e.value.message
    with pytest.raises(MeridianError) as e:
        c.write_bytes("nina/private.ipynb", b"overwritten?")
    assert e.value.status in (403, 404)
    assert sources(nina.get("private.ipynb")["content"]) == ["private = 1"]
    # A manager with a wrong token gets 401 with the service's words.
    bad = MeridianContentsManager(meridian_url=service[0], meridian_token="not-a-token")
    with pytest.raises(HTTPError) as e:
        bad.get("")
    assert status_of(e) == 401


def test_group_spaces_appear_as_directories(service):
    base, tokens = service
    h = {u: {"Authorization": f"Bearer {tokens[u]}"} for u in USERS}
    assert requests.post(f"{base}/api/groups", data={"name": "optics"}, headers=h["nina"]).status_code == 201
    for user, role in [("omar", "rw"), ("pia", "ro")]:
        r = requests.post(f"{base}/api/groups/optics/members", data={"user": user, "role": role},
                          headers=h["nina"])
        assert r.status_code == 200, r.text
        r = requests.post(f"{base}/api/groups/optics/members", data={"action": "accept"}, headers=h[user])
        assert r.status_code == 200, r.text

    nina, omar, pia = (manager(service, u) for u in USERS)
    assert "groups" in [c["name"] for c in nina.get("")["content"]]
    groups = nina.get("groups")
    assert [(g["name"], g["writable"]) for g in groups["content"]] == [("optics", True)]
    assert [(g["name"], g["writable"]) for g in pia.get("groups")["content"]] == [("optics", False)]

    nina.save(nb_model(notebook("shared = 'optics'")), "groups/optics/shared.ipynb")
    # The group's space for the storage API (optics://) and for the other members.
    r = storage_get(dl(service, "omar"), base, "optics://shared.ipynb")
    assert sources(nbformat.reads(r.text, as_version=4)) == ["shared = 'optics'"]
    assert sources(omar.get("groups/optics/shared.ipynb")["content"]) == ["shared = 'optics'"]
    omar.save(nb_model(notebook("shared = 'edited by omar'")), "groups/optics/shared.ipynb")
    assert sources(pia.get("groups/optics/shared.ipynb")["content"]) == ["shared = 'edited by omar'"]
    # A read-only member reads, and is refused a save with the service's words.
    listed = {c["name"]: c["writable"] for c in pia.get("groups/optics")["content"]}
    assert listed["shared.ipynb"] is False and not any(listed.values())
    with pytest.raises(HTTPError) as e:
        pia.save(nb_model(notebook("pia was here")), "groups/optics/shared.ipynb")
    assert status_of(e) == 403 and "PermissionDenied" in e.value.log_message
    assert sources(nina.get("groups/optics/shared.ipynb")["content"]) == ["shared = 'edited by omar'"]
    # The listing itself holds no files.
    with pytest.raises(HTTPError) as e:
        nina.save(nb_model(notebook()), "groups/loose.ipynb")
    assert status_of(e) in (400, 404)
    # Someone outside the group (none here: a fresh manager of a user who left) sees none.
    r = requests.delete(f"{base}/api/groups/optics/members/pia", headers=h["pia"])
    assert r.status_code == 204
    pia = manager(service, "pia")
    assert "groups" not in [c["name"] for c in pia.get("")["content"]]
    with pytest.raises(HTTPError) as e:
        pia.get("groups/optics/shared.ipynb")
    assert status_of(e) == 404


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cls", ["MeridianContentsManager", "AsyncMeridianContentsManager"])
def test_through_a_jupyter_server(service, tmp_path, cls):
    """JupyterLab's REST calls (/api/contents) on a real `jupyter server` whose contents
    manager is Meridian's."""
    base, tokens = service
    port = free_port()
    env = {**os.environ, "MERIDIAN_URL": base, "MERIDIAN_TOKEN": tokens["omar"],
           "PYTHONPATH": os.pathsep.join([str(ROOT / "notebooks" / "python"), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "run")}
    cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=jt", f"--ServerApp.root_dir={tmp_path}",
           f"--ServerApp.contents_manager_class=meridian_hub.contents.{cls}"]
    log = tmp_path / "jupyter-server.log"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    api = f"http://127.0.0.1:{port}/api/contents"
    h = {"Authorization": "token jt"}
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/status", headers=h, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            proc.kill()
            raise AssertionError(f"jupyter server did not start:\n{log.read_text()}")
        folder = f"jl-{cls}"
        r = requests.put(f"{api}/{folder}", json={"type": "directory"}, headers=h)
        assert r.status_code == 201, r.text
        nb = notebook("from JupyterLab")
        r = requests.put(f"{api}/{folder}/lab.ipynb", json={"type": "notebook", "content": nb}, headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["path"] == f"{folder}/lab.ipynb"
        # In omar's storage.
        got = storage_get(dl(service, "omar"), base, f"vos://{folder}/lab.ipynb")
        assert sources(nbformat.reads(got.text, as_version=4)) == ["from JupyterLab"]
        # The file browser's listing and the notebook, as JupyterLab reads them.
        r = requests.get(f"{api}/{folder}", headers=h)
        assert r.status_code == 200 and [c["name"] for c in r.json()["content"]] == ["lab.ipynb"]
        r = requests.get(f"{api}/{folder}/lab.ipynb", headers=h)
        assert r.status_code == 200 and r.json()["content"]["cells"][0]["source"] == "from JupyterLab"
        r = requests.get(f"{api}/{folder}/lab.ipynb/checkpoints", headers=h)
        assert r.status_code == 200 and [c["id"] for c in r.json()] == ["checkpoint"]
        # Rename, copy and a save over the quota, with the service's message.
        r = requests.patch(f"{api}/{folder}/lab.ipynb", json={"path": f"{folder}/renamed.ipynb"}, headers=h)
        assert r.status_code == 200, r.text
        r = requests.post(f"{api}/{folder}", json={"copy_from": f"{folder}/renamed.ipynb"}, headers=h)
        assert r.status_code == 201 and r.json()["name"] == "renamed-Copy1.ipynb", log.read_text()[-3000:]
        big = notebook("too big", pad=1_200_000)
        r = requests.put(f"{api}/{folder}/renamed.ipynb", json={"type": "notebook", "content": big}, headers=h)
        assert r.status_code == 413 and "quota" in r.json()["message"], r.text
        r = requests.get(f"{api}/{folder}/renamed.ipynb", headers=h)
        assert r.json()["content"]["cells"][0]["source"] == "from JupyterLab"
        r = requests.get(f"{api}/{folder}/missing.ipynb", headers=h)
        # (jupyter_server answers a GET's 404 with its own words)
        assert r.status_code == 404 and "missing.ipynb" in r.text
        r = requests.patch(f"{api}/{folder}/missing.ipynb", json={"path": f"{folder}/x.ipynb"}, headers=h)
        assert r.status_code == 404 and "NodeNotFound" in r.json()["message"], r.text
        for name in ["renamed.ipynb", "renamed-Copy1.ipynb"]:
            assert requests.delete(f"{api}/{folder}/{name}", headers=h).status_code == 204
        assert requests.delete(f"{api}/{folder}", headers=h).status_code == 204
        assert storage_get(dl(service, "omar"), base, f"vos://{folder}").status_code == 404
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_async_manager_and_large_chunked_uploads(service):
    import asyncio

    cm = manager(service, "omar", cls=AsyncMeridianContentsManager)
    blob = os.urandom(300_000)
    chunks = [blob[i:i + 100_000] for i in range(0, len(blob), 100_000)]

    async def go():
        for i, c in enumerate(chunks):
            n = -1 if i == len(chunks) - 1 else i + 1
            m = await cm.save({"type": "file", "format": "base64", "chunk": n,
                               "content": base64.b64encode(c).decode()}, "upload.bin")
        assert m["size"] == len(blob)
        got = await cm.get("upload.bin")
        assert base64.b64decode(got["content"]) == blob
        assert await cm.file_exists("upload.bin") and not await cm.dir_exists("upload.bin")
        await cm.delete("upload.bin")
        assert not await cm.exists("upload.bin")

    asyncio.run(go())
    assert storage_get(dl(service, "omar"), service[0], "vos://upload.bin").status_code == 404


# -- the notebook helper ----------------------------------------------------------------------


@pytest.fixture
def notebook_env(service, monkeypatch):
    """The notebook server's environment: MERIDIAN_URL and MERIDIAN_TOKEN of omar."""
    monkeypatch.setenv("MERIDIAN_URL", service[0])
    monkeypatch.setenv("MERIDIAN_TOKEN", service[1]["omar"])
    monkeypatch.setattr(meridian, "_default", None)
    yield service


def direct_csv(service, user, query, **params):
    """The query's result as a plain HTTP request to /tap/sync gives it, in CSV."""
    r = requests.post(f"{service[0]}/tap/sync",
                      data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": query, "FORMAT": "csv", **params},
                      headers={"Authorization": f"Bearer {service[1][user]}"})
    assert r.status_code == 200, r.text
    return pd.read_csv(io.StringIO(r.text))


CONE = ("SELECT objectId, ra, dec, g_mag, r_mag FROM demo_object "
        "WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, 15)) ORDER BY objectId")


def some_position(service):
    row = direct_csv(service, "omar", "SELECT TOP 1 ra, dec FROM demo_object ORDER BY objectId")
    return float(row.ra[0]), float(row.dec[0])


def test_helper_query_and_tap_agree_with_direct_requests(notebook_env):
    service = notebook_env
    assert meridian.whoami()["user"] == "omar"
    assert meridian.session().headers["Authorization"] == f"Bearer {service[1]['omar']}"
    ra, dec = some_position(service)
    q = CONE.format(ra=ra, dec=dec)
    expected = direct_csv(service, "omar", q)
    assert len(expected) > 5

    t = meridian.query(q)
    assert t.colnames == ["objectId", "ra", "dec", "g_mag", "r_mag"]
    assert list(t["objectId"]) == list(expected.objectId)
    np.testing.assert_allclose(np.asarray(t["ra"], float), expected.ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(t["g_mag"], float), expected.g_mag, rtol=1e-6, equal_nan=True)

    pv = meridian.tap().run_sync(q).to_table()
    assert list(pv["objectId"]) == list(expected.objectId)
    # An async job through pyvo, with the token (the job is omar's).
    job = meridian.tap().submit_job("SELECT COUNT(*) AS n FROM demo_object")
    job.run().wait(timeout=120)
    n = job.fetch_result().to_table()["n"][0]
    assert n == direct_csv(service, "omar", "SELECT COUNT(*) AS n FROM demo_object").n[0]
    r = requests.get(f"{service[0]}/tap/async/{job.job_id}/phase")
    assert r.status_code in (401, 403, 404)  # not anonymous's job
    job.delete()

    # SQL, MAXREC (a cut result warns), uploads joined with the catalog.
    sql = meridian.query("SELECT COUNT(*) AS n FROM demo_object WHERE g_mag < 20", lang="SQL")
    assert sql["n"][0] == direct_csv(service, "omar", "SELECT COUNT(*) AS n FROM demo_object WHERE g_mag < 20").n[0]
    with pytest.warns(UserWarning, match="MAXREC"):
        cut = meridian.query("SELECT objectId FROM demo_object", maxrec=7)
    assert len(cut) == 7 and cut.meta["overflow"]
    from astropy.table import Table
    ids = Table({"oid": np.asarray(expected.objectId[:4], dtype=np.int64)})
    joined = meridian.query("SELECT o.objectId, o.ra FROM demo_object AS o JOIN TAP_UPLOAD.mine AS m "
                            "ON o.objectId = m.oid ORDER BY o.objectId", uploads={"mine": ids})
    assert list(joined["objectId"]) == list(expected.objectId[:4])

    # Errors carry the service's own message.
    bad = "SELECT nope FROM demo_object"
    r = requests.post(f"{service[0]}/tap/sync", data={"REQUEST": "doQuery", "LANG": "ADQL", "QUERY": bad})
    with pytest.raises(MeridianError) as e:
        meridian.query(bad)
    assert e.value.status == r.status_code == 400
    assert e.value.message and e.value.message in r.text.replace("&apos;", "'").replace("&quot;", '"')


def test_helper_sia_and_ssa_agree_with_direct_requests(notebook_env):
    service = notebook_env
    base = service[0]
    # Images: SIA 2.0 through pyvo against a direct request of the same circle.
    r = requests.get(f"{base}/sia/query", params={"POS": "CIRCLE 0 0 180", "MAXREC": 1000})
    from astropy.io.votable import parse_single_table
    every = parse_single_table(io.BytesIO(r.content)).to_table()
    assert len(every) > 0
    ra, dec = float(every["s_ra"][0]), float(every["s_dec"][0])
    r = requests.get(f"{base}/sia/query", params={"POS": f"CIRCLE {ra} {dec} 0.5"})
    direct = parse_single_table(io.BytesIO(r.content)).to_table()
    found = meridian.sia().search(pos=(ra, dec, 0.5)).to_table()
    assert len(found) == len(direct) > 0
    assert sorted(found["obs_publisher_did"]) == sorted(direct["obs_publisher_did"])
    # Spectra: SSA through pyvo against a direct queryData of the same place.
    r = requests.get(f"{base}/ssa", params={"REQUEST": "queryData", "POS": "0,0", "SIZE": 360,
                                            "MAXREC": 10})
    spectra = parse_single_table(io.BytesIO(r.content)).to_table()
    assert len(spectra) > 0
    sra, sdec = (float(v) for v in spectra["ssa_location"][0])
    r = requests.get(f"{base}/ssa", params={"REQUEST": "queryData", "POS": f"{sra},{sdec}", "SIZE": 1})
    near = parse_single_table(io.BytesIO(r.content)).to_table()
    found = meridian.ssa().search(pos=(sra, sdec), diameter=1).to_table()
    key = lambda t: sorted(zip(t["ssa_pubDID"], t["mime"]))  # noqa: E731
    assert len(near) > 0 and key(found) == key(near)


def test_helper_vos_and_mydb(notebook_env, tmp_path):
    service = notebook_env
    s, base = dl(service, "omar"), service[0]
    vos, mydb = meridian.vos, meridian.mydb
    vos.mkdir("helper/deep/er", parents=True)
    vos.mkdir("helper/deep/er", parents=True)  # again: no error
    assert vos.isdir("helper/deep") and not vos.exists("helper/nothing")
    local = tmp_path / "points.csv"
    local.write_text("objectId,ra,dec\n1,10.0,20.0\n2,11.0,21.0\n")
    assert vos.put(local, "helper/") == "omar/helper/points.csv"
    assert storage_get(s, base, "vos://helper/points.csv").text == local.read_text()
    assert storage_put(s, base, "vos://helper/api.txt", b"from the API").status_code == 201
    assert sorted(vos.ls("helper")) == ["api.txt", "deep", "points.csv"]
    long = {n.name: n for n in vos.ls("vos://helper", long=True)}
    assert long["deep"].type == "container" and long["points.csv"].size == len(local.read_bytes())
    assert vos.get("helper/api.txt") == b"from the API"
    out = vos.get("omar://helper/points.csv", tmp_path / "back.csv")
    assert Path(out).read_text() == local.read_text()
    vos.put_bytes("helper/text.txt", "ünïcode")
    assert storage_get(s, base, "vos://helper/text.txt").content == "ünïcode".encode()
    assert vos.mv("helper/text.txt", "helper/deep") == "omar/helper/deep/text.txt"
    vos.cp("helper/deep/text.txt", "helper/copy.txt")
    assert storage_get(s, base, "vos://helper/copy.txt").content == "ünïcode".encode()
    assert vos.get("vos://meridian!vospace/omar/helper/copy.txt") == "ünïcode".encode()
    with pytest.raises(MeridianError) as e:
        vos.get("helper/missing.txt")
    assert e.value.status == 404 and "NodeNotFound" in e.value.message
    with pytest.raises(MeridianError) as e:
        vos.mv("helper/copy.txt", "helper/api.txt")
    assert e.value.status == 409 and "DuplicateNode" in e.value.message
    with pytest.raises(MeridianError) as e:
        vos.put_bytes("helper/huge.bin", b"\0" * (2 << 20))
    assert e.value.status == 413 and "quota" in e.value.message
    vos.delete("helper")
    assert s.get(f"{base}/storage/stat", params={"name": "vos://helper"}).status_code == 404

    # MyDB: a table saved from astropy, read back and compared with a direct query.
    ra, dec = some_position(service)
    bright = meridian.query(CONE.format(ra=ra, dec=dec))
    mydb.save("near", bright)
    assert "near" in mydb.list()
    assert [c for c, _ in mydb.columns("near")] == ["objectId", "ra", "dec", "g_mag", "r_mag"]
    direct = direct_csv(service, "omar", "SELECT objectId, g_mag FROM mydb.near ORDER BY objectId")
    assert list(direct.objectId) == list(bright["objectId"])
    back = mydb.get("near")
    assert sorted(back["objectId"]) == sorted(bright["objectId"])
    with pytest.raises(MeridianError) as e:
        mydb.save("near", bright)
    assert e.value.status == 409 and "exists" in e.value.message
    mydb.save("near", bright[:3], replace=True)
    assert len(mydb.get("near")) == 3
    # From a local file (a pandas DataFrame too), and from a query run on the service.
    mydb.save("points", str(local))
    assert sorted(mydb.get("points")["objectId"]) == [1, 2]
    mydb.save("frame", pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}))
    assert list(mydb.get("frame")["b"]) == ["x", "y", "z"]
    q = "SELECT objectId, ra, dec FROM demo_object WHERE g_mag < 21"
    rows = mydb.save_query("faint_cut", q)
    assert rows == len(direct_csv(service, "omar", q))
    for name in ["near", "points", "frame", "faint_cut"]:
        mydb.drop(name)
    assert mydb.list() == []
    with pytest.raises(MeridianError) as e:
        mydb.columns("near")
    assert e.value.status == 404


def test_helper_without_environment_or_with_a_bad_token(service, monkeypatch):
    monkeypatch.delenv("MERIDIAN_URL", raising=False)
    monkeypatch.setattr(meridian, "_default", None)
    with pytest.raises(MeridianError, match="MERIDIAN_URL"):
        meridian.whoami()
    c = Client(service[0] + "/tap", token="revoked-or-wrong")
    assert c.url == service[0]
    with pytest.raises(MeridianError) as e:
        c.whoami()
    assert e.value.status == 401 and e.value.message
    with pytest.raises(MeridianError) as e:
        Client("http://127.0.0.1:9", token="x", timeout=5).whoami()
    assert e.value.status == 502 and "cannot be reached" in str(e.value)


# -- vos:// for fsspec, pandas and astropy (meridian.fs) ---------------------------------


def test_vos_urls_read_and_write_storage_through_fsspec_and_pandas(service):
    import fsspec
    from astropy.table import Table

    base, tokens = service
    opts = {"meridian_url": base, "meridian_token": tokens["nina"]}
    nina = dl(service, "nina")
    df = pd.DataFrame({"id": np.arange(50), "ra": np.linspace(0, 359, 50),
                       "dec": np.linspace(-80, 80, 50), "band": list("ugrizy" * 8 + "ug")})
    # Written with pandas: the bytes Data Lab's storage API reads are pandas' own CSV.
    df.to_csv("vos://fsspec/stars.csv", index=False, storage_options=opts)
    r = storage_get(nina, base, "vos://fsspec/stars.csv")
    assert r.status_code == 200 and r.content == df.to_csv(index=False).encode()
    # Written with the storage API: pandas and astropy read it through vos://.
    assert storage_put(nina, base, "vos://fsspec/put.csv",
                       df.to_csv(index=False).encode()).status_code in (200, 201, 204)
    back = pd.read_csv("vos://fsspec/put.csv", storage_options=opts)
    pd.testing.assert_frame_equal(back, df)
    with fsspec.open("vos://fsspec/put.csv", "rb", **opts) as f:
        t = Table.read(f, format="ascii.csv")
    assert list(t["id"]) == list(range(50)) and list(t["band"]) == list(df["band"])
    # Parquet both ways.
    df.to_parquet("vos://fsspec/stars.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(pd.read_parquet("vos://fsspec/stars.parquet",
                                                  storage_options=opts), df)

    fs = fsspec.filesystem("vos", **opts)
    listed = {e["name"]: e for e in fs.ls("vos://fsspec")}
    assert set(listed) == {"fsspec/stars.csv", "fsspec/put.csv", "fsspec/stars.parquet"}
    assert listed["fsspec/put.csv"]["size"] == len(df.to_csv(index=False).encode())
    assert listed["fsspec/put.csv"]["type"] == "file" and fs.isdir("vos://fsspec")
    # The same node through the vos command's view (the storage API's ls).
    names = nina.get(f"{base}/storage/ls", params={"name": "vos://fsspec"}).text
    assert "put.csv" in names and "stars.parquet" in names
    # Text mode, directories, copy, move, delete.
    fs.makedirs("vos://fsspec/a/b", exist_ok=True)
    with fsspec.open("vos://fsspec/a/b/note.txt", "w", **opts) as f:
        f.write("first line\n")
    assert fs.cat("vos://fsspec/a/b/note.txt") == b"first line\n"
    fs.cp("vos://fsspec/a/b/note.txt", "vos://fsspec/copy.txt")
    fs.mv("vos://fsspec/copy.txt", "vos://fsspec/a/moved.txt")
    assert fs.cat("vos://fsspec/a/moved.txt") == b"first line\n"
    assert not fs.exists("vos://fsspec/copy.txt")
    assert storage_get(nina, base, "vos://fsspec/a/moved.txt").content == b"first line\n"
    with pytest.raises(OSError):
        fs.rm("vos://fsspec/a")  # not empty
    fs.rm("vos://fsspec/a", recursive=True)
    assert not fs.exists("vos://fsspec/a/b/note.txt")
    with pytest.raises(FileNotFoundError):
        pd.read_csv("vos://fsspec/none.csv", storage_options=opts)


def test_vos_urls_keep_the_quota_and_other_users_files(service):
    import fsspec

    base, tokens = service
    opts = {"meridian_url": base, "meridian_token": tokens["nina"]}
    fs = fsspec.filesystem("vos", **opts)
    fs.pipe("vos://fsspec-quota/keep.bin", b"old bytes")
    # Over the 1 MiB quota: the service's message, the old bytes kept.
    with pytest.raises(MeridianError) as e:
        with fsspec.open("vos://fsspec-quota/keep.bin", "wb", **opts) as f:
            f.write(b"x" * (3 << 19))
    assert e.value.status == 413 and "quota" in e.value.message
    assert fs.cat("vos://fsspec-quota/keep.bin") == b"old bytes"
    assert storage_get(dl(service, "nina"), base, "vos://fsspec-quota/keep.bin").content \
        == b"old bytes"
    # Another user reaches none of it, by any name.
    omar = fsspec.filesystem("vos", meridian_url=base, meridian_token=tokens["omar"])
    for name in ("vos://meridian!vospace/nina/fsspec-quota/keep.bin",
                 "vos://meridian!vospace/nina/fsspec-quota"):
        with pytest.raises((MeridianError, FileNotFoundError)) as e:
            omar.cat(name) if name.endswith(".bin") else omar.ls(name)
        assert getattr(e.value, "status", 404) in (403, 404)
    # omar's own vos://fsspec-quota/keep.bin is his, not nina's.
    assert not omar.exists("vos://fsspec-quota/keep.bin")
