"""JupyterLab's files are the user's Meridian storage.

:class:`MeridianContentsManager` is a Jupyter contents manager over Meridian's VOSpace API
(``/vospace/nodes``, ``/vospace/files``, ``/vospace/synctrans``, ``/vospace/transfers``)
with the user's own token, so that a notebook saved in JupyterLab is a file of
``vos://`` (``meridian vos get`` and the storage API read it), and a file put there by any
client shows in JupyterLab's file browser:

- ``/`` of the file browser is the user's home, ``vos://meridian!vospace/<user>/``;
- each group the user belongs to shows as ``groups/<group>/`` (the group's space,
  ``<group>://`` to Meridian's clients), writable for the roles that write (owner,
  admin, rw); the directory ``groups`` is left out while the home has a node of that
  name (which then shows instead);
- directories are container nodes; notebooks (``.ipynb``, JSON through nbformat), text
  and binary files (base64) are data nodes;
- checkpoints are hidden files beside the notebook,
  ``<dir>/.ipynb_checkpoints/<name>-checkpoint.ipynb``, in storage too.

A save replaces a file's bytes whole: the service stores the new bytes under a new key and
swaps the node over only when every byte is in, so a refused save (over the storage quota,
over the upload limit, cut off) leaves the previous version in place. Every refusal of the
service reaches JupyterLab as ``tornado.web.HTTPError`` with the service's status (401,
403, 404, 409, 413, 507, ...) and its own message.

Configuration (``--ServerApp.contents_manager_class=meridian_hub.contents.MeridianContentsManager``
or the :class:`AsyncMeridianContentsManager`, which makes its HTTP calls off the server's
event loop): ``meridian_url`` and ``meridian_token`` default to ``MERIDIAN_URL`` and
``MERIDIAN_TOKEN``; ``groups_dir`` names the directory of the groups' spaces (empty: not
shown).
"""

import asyncio
import base64
import hashlib
import mimetypes
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import nbformat
from jupyter_server.services.contents.checkpoints import AsyncCheckpoints, Checkpoints
from jupyter_server.services.contents.manager import AsyncContentsManager, ContentsManager
from tornado.web import HTTPError
from traitlets import Bool, Float, Instance, Unicode, default
from traitlets.config import LoggingConfigurable

from meridian import Client, MeridianError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
WRITING_ROLES = ("owner", "admin", "rw")


def http_error(e):
    """The HTTPError JupyterLab shows for a refusal of Meridian: its status and words."""
    status = e.status if 400 <= (e.status or 0) <= 599 else 502
    return HTTPError(status, e.message)


@contextmanager
def service():
    """Turns Meridian's refusals into HTTPErrors."""
    try:
        yield
    except MeridianError as e:
        raise http_error(e) from e


class Place:
    """Where an API path leads: the ``root`` of the file browser, the ``groups``
    directory, or a storage ``node`` (its node path, and whether the role writes)."""

    __slots__ = ("kind", "node", "writable")

    def __init__(self, kind, node=None, writable=False):
        self.kind = kind
        self.node = node
        self.writable = writable

    @property
    def virtual(self):
        return self.kind != "node"


class MeridianOptions(LoggingConfigurable):
    """The settings both contents managers share."""

    meridian_url = Unicode(
        config=True, help="Meridian's base URL (http://host:port); default: $MERIDIAN_URL.")
    meridian_token = Unicode(
        config=True, help="The user's Meridian token; default: $MERIDIAN_TOKEN.")
    groups_dir = Unicode(
        "groups", config=True,
        help="The top-level directory holding the spaces of the user's groups (empty: "
        "groups are not shown).")
    groups_cache_s = Float(
        30.0, config=True, help="Seconds the list of the user's groups is kept.")
    request_timeout_s = Float(
        300.0, config=True, help="Seconds a request to Meridian may take.")
    always_delete_dir = Bool(
        False, config=True,
        help="Delete directories that are not empty (their files are not kept anywhere: "
        "there is no trash).")

    @default("meridian_url")
    def _default_url(self):
        return os.environ.get("MERIDIAN_URL", "")

    @default("meridian_token")
    def _default_token(self):
        return os.environ.get("MERIDIAN_TOKEN", "")


class MeridianContentsManager(MeridianOptions, ContentsManager):
    """A contents manager over the user's Meridian storage (see the module's text)."""

    client = Instance(Client, allow_none=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._groups_lock = threading.Lock()
        self._groups_at = None
        self._groups = {}
        self._spools = {}
        self._spools_lock = threading.Lock()

    @default("checkpoints_class")
    def _default_checkpoints_class(self):
        return MeridianCheckpoints

    @default("client")
    def _default_client(self):
        if not self.meridian_url:
            raise HTTPError(500, "MERIDIAN_URL is not set: the notebook server does not know "
                                 "where Meridian is")
        return Client(url=self.meridian_url, token=self.meridian_token,
                      timeout=self.request_timeout_s)

    def info_string(self):
        return f"Serving notebooks from Meridian storage at {self.meridian_url}"

    # -- where paths lead --------------------------------------------------------------

    @property
    def user(self):
        with service():
            return self.client.user

    def group_roles(self, refresh=False):
        """The user's groups with their roles ({} when ``groups_dir`` is hidden or
        empty), kept ``groups_cache_s`` seconds."""
        if not self.groups_dir:
            return {}
        with self._groups_lock:
            now = time.monotonic()
            if refresh or self._groups_at is None or now - self._groups_at > self.groups_cache_s:
                with service():
                    roles = {g["name"]: g.get("role", "ro") for g in self.client.groups()}
                    if roles and self._home_has(self.groups_dir):
                        self.log.warning(
                            "the home of %s has a node '%s': the groups' spaces are not shown "
                            "(set MeridianContentsManager.groups_dir to another name)",
                            self.client.user, self.groups_dir)
                        roles = {}
                self._groups = roles
                self._groups_at = now
            return dict(self._groups)

    def _home_has(self, name):
        try:
            self.client.node(f"{self.client.user}/{name}")
            return True
        except MeridianError as e:
            if e.status == 404:
                return False
            raise

    def place(self, path):
        """Where API path ``path`` leads (None: a group the user is not in)."""
        segs = [s for s in path.strip("/").split("/") if s]
        if not segs:
            return Place("root")
        if self.groups_dir and segs[0] == self.groups_dir:
            roles = self.group_roles()
            if roles:
                if len(segs) == 1:
                    return Place("groups")
                role = roles.get(segs[1])
                if role is None:
                    return None
                return Place("node", "/".join(segs[1:]), role in WRITING_ROLES)
        return Place("node", "/".join([self.user] + segs), True)

    def node_of(self, path):
        """The node path of API path ``path``; HTTPError for the virtual directories and
        groups the user is not in."""
        p = self.place(path)
        if p is None:
            raise HTTPError(404, f"No such file or directory: {path} (not a group of yours)")
        if p.virtual:
            raise HTTPError(400, f"'{path or '/'}' is a listing of storage spaces, not a "
                                 "directory that holds files")
        return p.node

    # -- existence ---------------------------------------------------------------------

    def _node(self, place):
        """The node of ``place``, or None when it does not exist."""
        try:
            return self.client.node(place.node)[0]
        except MeridianError as e:
            if e.status == 404:
                return None
            raise http_error(e) from e

    def dir_exists(self, path):
        p = self.place(path)
        if p is None:
            return False
        if p.virtual:
            return True
        n = self._node(p)
        return n is not None and n.type == "container"

    def file_exists(self, path=""):
        p = self.place(path)
        if p is None or p.virtual:
            return False
        n = self._node(p)
        return n is not None and n.type != "container"

    def exists(self, path):
        p = self.place(path)
        if p is None:
            return False
        return p.virtual or self._node(p) is not None

    def is_hidden(self, path):
        return any(s.startswith(".") for s in path.strip("/").split("/") if s)

    # -- models ------------------------------------------------------------------------

    def _base(self, path, kind, writable, node=None):
        date = (node.date if node is not None else None) or EPOCH
        return {
            "name": path.rstrip("/").rsplit("/", 1)[-1],
            "path": path,
            "type": kind,
            "writable": writable,
            "created": date,
            "last_modified": date,
            "content": None,
            "format": None,
            "mimetype": None,
            "size": node.size if node is not None and kind != "directory" else None,
            "hash": None,
            "hash_algorithm": None,
        }

    def _listed(self, name):
        return self.should_list(name) and (self.allow_hidden or not name.startswith("."))

    @staticmethod
    def _kind_of(node, name):
        if node.type == "container":
            return "directory"
        return "notebook" if name.endswith(".ipynb") else "file"

    def _child(self, parent, node, writable):
        path = f"{parent}/{node.name}" if parent else node.name
        m = self._base(path, self._kind_of(node, node.name), writable, node)
        if m["type"] == "file":
            m["mimetype"] = mimetypes.guess_type(node.name)[0]
        return m

    def _virtual_model(self, path, place, content):
        m = self._base(path, "directory", False)
        if not content:
            return m
        items = []
        if place.kind == "root":
            with service():
                _, children = self.client.node(self.user, children=True)
            names = {c.name for c in children}
            items = [self._child("", c, True) for c in children if self._listed(c.name)]
            roles = self.group_roles(refresh=True)
            if roles and self.groups_dir not in names:
                items.append(self._base(self.groups_dir, "directory", False))
        else:
            for name, role in sorted(self.group_roles().items()):
                g = self._base(f"{self.groups_dir}/{name}", "directory", role in WRITING_ROLES)
                items.append(g)
        m["content"] = items
        m["format"] = "json"
        return m

    def get(self, path, content=True, type=None, format=None, require_hash=False):
        return self.get_model(path, content, type, format, require_hash)

    def get_model(self, path, content=True, type=None, format=None, require_hash=False,
                  trust=True):
        """:meth:`get`; without ``trust``, a notebook's cells are not marked trusted (the
        caller does it: the notary's database is bound to one thread)."""
        path = path.strip("/")
        place = self.place(path)
        if place is None:
            raise HTTPError(404, f"No such file or directory: {path} (not a group of yours)")
        if place.virtual:
            if type not in (None, "directory"):
                raise HTTPError(400, f"{path or '/'} is not a {type}", reason="bad type")
            m = self._virtual_model(path, place, content)
            # New files at the top go to the home.
            m["writable"] = place.kind == "root"
            return m
        with service():
            node, children = self.client.node(place.node, children=content)
        kind = self._kind_of(node, node.name)
        if type is not None and (type == "directory") != (kind == "directory"):
            raise HTTPError(400, f"{path} is not a {type}", reason="bad type")
        if kind == "directory":
            m = self._base(path, "directory", place.writable, node)
            if content:
                m["content"] = [self._child(path, c, place.writable)
                                for c in children or [] if self._listed(c.name)]
                m["format"] = "json"
            return m
        kind = type or kind
        m = self._base(path, kind, place.writable, node)
        data = None
        if content or require_hash:
            with service():
                data = self.client.read_bytes(place.node)
            m["size"] = len(data)
        if require_hash:
            m["hash"] = hashlib.sha256(data).hexdigest()
            m["hash_algorithm"] = "sha256"
        if kind == "notebook":
            if content:
                try:
                    nb = nbformat.reads(data.decode("utf-8"), as_version=4)
                except Exception as e:
                    raise HTTPError(400, f"Unreadable Notebook: {path} {e!r}") from e
                if trust:
                    self.mark_trusted_cells(nb, path)
                m["content"] = nb
                m["format"] = "json"
                self.validate_notebook_model(m)
            return m
        m["mimetype"] = mimetypes.guess_type(node.name)[0]
        if content:
            if format in (None, "text"):
                try:
                    m["content"] = data.decode("utf-8")
                    m["format"] = "text"
                except UnicodeDecodeError as e:
                    if format == "text":
                        raise HTTPError(400, f"{path} is not UTF-8 encoded",
                                        reason="bad format") from e
            if m["content"] is None:
                m["content"] = base64.b64encode(data).decode("ascii")
                m["format"] = "base64"
            if m["mimetype"] is None:
                m["mimetype"] = "text/plain" if m["format"] == "text" else "application/octet-stream"
        return m

    # -- writing -----------------------------------------------------------------------

    def save(self, model, path=""):
        path = path.strip("/")
        if model.get("chunk") is None:
            self.run_pre_save_hooks(model=model, path=path)
        return self.save_unhooked(model, path)

    def save_unhooked(self, model, path, sign=True):
        """Saves ``model`` at ``path`` (the pre-save hooks have run; without ``sign``, the
        caller has signed a notebook)."""
        if "type" not in model:
            raise HTTPError(400, "No file type provided")
        if "content" not in model and model["type"] != "directory":
            raise HTTPError(400, "No file content provided")
        node = self.node_of(path)
        chunk = model.get("chunk")
        if chunk is not None:
            return self._save_chunk(model, path, node, chunk)
        kind = model["type"]
        message = None
        if kind == "directory":
            self._make_dir(path, node)
            return self.get(path, content=False)
        if kind == "notebook":
            nb = nbformat.from_dict(model["content"])
            if sign:
                self.check_and_sign(nb, path)
            data = nbformat.writes(nb, version=nbformat.NO_CONVERT).encode("utf-8")
            check = {"content": nb}
            self.validate_notebook_model(check)
            message = check.get("message")
        elif kind == "file":
            data = self._file_bytes(model, path)
        else:
            raise HTTPError(400, f"Unhandled contents type: {kind}")
        with service():
            self.client.write_bytes(node, data)
        if kind == "notebook" and not self.checkpoints.list_checkpoints(path):
            # One checkpoint should always exist for a notebook: a refusal (the quota) is
            # logged, the notebook itself is saved.
            try:
                self.create_checkpoint(path)
            except HTTPError as e:
                self.log.warning("no checkpoint of %s: %s", path, e.log_message)
        m = self.get(path, content=False)
        if message:
            m["message"] = message
        return m

    @staticmethod
    def _file_bytes(model, path):
        fmt = model.get("format")
        content = model["content"]
        if fmt == "text":
            return content.encode("utf-8")
        if fmt == "base64":
            try:
                return base64.b64decode(content.encode("ascii"), validate=False)
            except Exception as e:
                raise HTTPError(400, f"Encoding error saving {path}: {e}") from e
        raise HTTPError(400, "Must specify format of file contents as 'text' or 'base64'")

    def _make_dir(self, path, node):
        try:
            self.client.make_container(node)
        except MeridianError as e:
            if e.status != 409:
                raise http_error(e) from e
            with service():
                if self.client.node(node)[0].type != "container":
                    raise HTTPError(400, f"Not a directory: {path}") from e

    def _save_chunk(self, model, path, node, chunk):
        """One chunk of a large upload (JupyterLab sends files over 1 MiB in chunks
        numbered 1, 2, ..., -1 for the last): spooled here, stored whole at the last."""
        if model["type"] != "file" or model.get("format") != "base64":
            raise HTTPError(400, "Chunked uploads are of base64 files")
        data = self._file_bytes(model, path)
        with self._spools_lock:
            if chunk == 1:
                old = self._spools.pop(path, None)
                if old is not None:
                    old.close()
                self._spools[path] = tempfile.SpooledTemporaryFile(max_size=64 << 20)
            spool = self._spools.get(path)
            if spool is None:
                raise HTTPError(400, f"The upload of {path} was not started (no chunk 1)")
            if chunk == -1:
                del self._spools[path]
        spool.write(data)
        if chunk != -1:
            m = self._base(path, "file", True)
            m["size"] = spool.tell()
            m["last_modified"] = m["created"] = datetime.now(timezone.utc)
            return m
        try:
            spool.seek(0)
            with service():
                self.client.write_bytes(node, spool.read())
        finally:
            spool.close()
        return self.get(path, content=False)

    def delete_file(self, path):
        path = path.strip("/")
        node = self.node_of(path)
        with service():
            try:
                n, children = self.client.node(node, children=True)
            except MeridianError as e:
                if e.status == 404:
                    raise HTTPError(404, f"File or directory does not exist: {path}") from e
                raise
            if n.type == "container" and not self.always_delete_dir:
                kept = [c.name for c in children or [] if c.name != ".ipynb_checkpoints"]
                if kept:
                    raise HTTPError(400, f"Directory {path} not empty")
            self.client.delete_node(node)

    def rename_file(self, old_path, new_path):
        old_path, new_path = old_path.strip("/"), new_path.strip("/")
        if old_path == new_path:
            return
        src, dst = self.node_of(old_path), self.node_of(new_path)
        if self.exists(new_path):
            raise HTTPError(409, f"File already exists: {new_path}")
        with service():
            self.client.transfer(src, dst)


class MeridianCheckpoints(Checkpoints):
    """Checkpoints as hidden files in storage beside their file:
    ``<dir>/.ipynb_checkpoints/<stem>-<id><ext>``, the id being ``checkpoint``."""

    checkpoint_dir = Unicode(".ipynb_checkpoints", config=True)

    def _cp_path(self, checkpoint_id, path):
        parent, _, name = path.strip("/").rpartition("/")
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        cp = f"{self.checkpoint_dir}/{stem}-{checkpoint_id}{dot}{ext}"
        return f"{parent}/{cp}" if parent else cp

    def _model(self, checkpoint_id, node):
        return {"id": checkpoint_id, "last_modified": node.date or EPOCH}

    def _ensure_dir(self, cm, cp_path):
        parent = cp_path.rpartition("/")[0]
        cm._make_dir(parent, cm.node_of(parent))

    def create_checkpoint(self, contents_mgr, path):
        cm = contents_mgr
        cp = self._cp_path("checkpoint", path)
        with service():
            data = cm.client.read_bytes(cm.node_of(path))
            self._ensure_dir(cm, cp)
            node = cm.node_of(cp)
            cm.client.write_bytes(node, data)
            return self._model("checkpoint", cm.client.node(node)[0])

    def restore_checkpoint(self, contents_mgr, checkpoint_id, path):
        cm = contents_mgr
        cp = self._cp_path(checkpoint_id, path)
        with service():
            try:
                data = cm.client.read_bytes(cm.node_of(cp))
            except MeridianError as e:
                if e.status == 404:
                    raise HTTPError(404, f"Checkpoint does not exist: {path}@{checkpoint_id}") from e
                raise
            cm.client.write_bytes(cm.node_of(path), data)

    def rename_checkpoint(self, checkpoint_id, old_path, new_path):
        cm = self.parent
        src = cm.node_of(self._cp_path(checkpoint_id, old_path))
        new_cp = self._cp_path(checkpoint_id, new_path)
        with service():
            self._ensure_dir(cm, new_cp)
            dst = cm.node_of(new_cp)
            try:
                cm.client.delete_node(dst)
            except MeridianError as e:
                if e.status != 404:
                    raise
            try:
                cm.client.transfer(src, dst)
            except MeridianError as e:
                if e.status != 404:
                    raise

    def delete_checkpoint(self, checkpoint_id, path):
        cm = self.parent
        with service():
            try:
                cm.client.delete_node(cm.node_of(self._cp_path(checkpoint_id, path)))
            except MeridianError as e:
                if e.status == 404:
                    raise HTTPError(404, f"Checkpoint does not exist: {path}@{checkpoint_id}") from e
                raise

    def list_checkpoints(self, path):
        cm = self.parent
        place = cm.place(self._cp_path("checkpoint", path))
        if place is None or place.virtual:
            return []
        node = cm._node(place)
        return [self._model("checkpoint", node)] if node is not None else []


# -- the same, off the event loop -----------------------------------------------------------


async def _off_loop(fn, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


class AsyncMeridianContentsManager(MeridianOptions, AsyncContentsManager):
    """:class:`MeridianContentsManager` for jupyter_server's async API: each call runs in
    a worker thread, so that a slow answer of Meridian never holds the server's event
    loop (kernels' messages, other requests)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sync = MeridianContentsManager(
            parent=self, log=self.log,
            meridian_url=self.meridian_url, meridian_token=self.meridian_token,
            groups_dir=self.groups_dir, groups_cache_s=self.groups_cache_s,
            request_timeout_s=self.request_timeout_s, always_delete_dir=self.always_delete_dir,
            allow_hidden=self.allow_hidden, hide_globs=self.hide_globs)

    @default("checkpoints_class")
    def _default_checkpoints_class(self):
        return AsyncMeridianCheckpoints

    def info_string(self):
        return self.sync.info_string()

    async def dir_exists(self, path):
        return await _off_loop(self.sync.dir_exists, path)

    async def file_exists(self, path=""):
        return await _off_loop(self.sync.file_exists, path)

    async def exists(self, path):
        return await _off_loop(self.sync.exists, path)

    async def is_hidden(self, path):
        return self.sync.is_hidden(path)

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        m = await _off_loop(self.sync.get_model, path, content=content, type=type,
                            format=format, require_hash=require_hash, trust=False)
        if m["type"] == "notebook" and m["content"] is not None:
            # Here, on the event loop's thread: the notary's database is bound to it.
            self.mark_trusted_cells(m["content"], path.strip("/"))
        return m

    async def save(self, model, path=""):
        path = path.strip("/")
        if model.get("chunk") is None:
            self.run_pre_save_hooks(model=model, path=path)
        if model.get("type") == "notebook" and "content" in model:
            self.check_and_sign(nbformat.from_dict(model["content"]), path)
        return await _off_loop(self.sync.save_unhooked, model, path, sign=False)

    async def delete_file(self, path):
        return await _off_loop(self.sync.delete_file, path)

    async def rename_file(self, old_path, new_path):
        return await _off_loop(self.sync.rename_file, old_path, new_path)


class AsyncMeridianCheckpoints(AsyncCheckpoints):
    """:class:`MeridianCheckpoints` off the event loop."""

    @property
    def _sync(self):
        return self.parent.sync.checkpoints

    async def create_checkpoint(self, contents_mgr, path):
        return await _off_loop(self._sync.create_checkpoint, contents_mgr.sync, path)

    async def restore_checkpoint(self, contents_mgr, checkpoint_id, path):
        return await _off_loop(self._sync.restore_checkpoint, contents_mgr.sync, checkpoint_id, path)

    async def rename_checkpoint(self, checkpoint_id, old_path, new_path):
        return await _off_loop(self._sync.rename_checkpoint, checkpoint_id, old_path, new_path)

    async def delete_checkpoint(self, checkpoint_id, path):
        return await _off_loop(self._sync.delete_checkpoint, checkpoint_id, path)

    async def list_checkpoints(self, path):
        return await _off_loop(self._sync.list_checkpoints, path)
