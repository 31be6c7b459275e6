"""A user's Meridian storage as an fsspec file system, protocol ``vos``.

Python's file APIs that take fsspec URLs read and write storage directly::

    import pandas as pd
    df = pd.read_csv("vos://results/stars.csv")        # the user's home
    df.to_parquet("vos://results/stars.parquet")
    with fsspec.open("vos://notes.txt", "w") as f:     # any fsspec client
        f.write("...")
    fs = fsspec.filesystem("vos"); fs.ls("vos://")

``vos://p`` names ``p`` in the user's home, ``vos://meridian!vospace/<space>/p`` a path
in another space (a group's), as the ``meridian`` helper and Data Lab's ``storeClient``
name them. The service is ``MERIDIAN_URL`` and the user the holder of ``MERIDIAN_TOKEN``
(a notebook server's environment), or those given as ``meridian_url`` and
``meridian_token`` (``fsspec.filesystem("vos", meridian_url=..., meridian_token=...)``,
pandas' ``storage_options``).

The package declares the protocol to fsspec (entry point ``fsspec.specs``), so that
``vos://`` URLs work without an import; ``import meridian`` registers it too. Files are
read whole and written whole (missing directories made, as object stores do): a file
opened for writing is stored when it is closed, as
one replacement of the old bytes (the service keeps them until the new ones are in), and
a write over the storage quota fails on close with the service's message, the old file
kept.
"""

import io

from fsspec.spec import AbstractFileSystem

from . import Client, MeridianError


def _missing(e, path):
    if isinstance(e, MeridianError) and e.status == 404:
        return FileNotFoundError(2, str(e), path)
    return e


class _Upload(io.BytesIO):
    """Bytes gathered in memory and stored when closed."""

    def __init__(self, fs, name):
        super().__init__()
        self.fs, self.name, self.mode = fs, name, "wb"

    def close(self):
        if not self.closed:
            data = self.getvalue()
            super().close()
            self.fs._store(self.name, data)


class VosFileSystem(AbstractFileSystem):
    """Meridian storage (VOSpace nodes) as an fsspec file system; see the module text."""

    protocol = ("vos",)
    root_marker = ""

    def __init__(self, meridian_url=None, meridian_token=None, client=None, **kwargs):
        super().__init__(**kwargs)
        self.client = client or Client(url=meridian_url, token=meridian_token)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, (list, tuple)):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("vos://"):
            path = path[len("vos://"):]
        return path.strip("/")

    def unstrip_protocol(self, name):
        return "vos://" + name

    def _node_path(self, path):
        return self.client.node_path("vos://" + self._strip_protocol(path))

    @staticmethod
    def _entry(name, node):
        kind = "directory" if node.type == "container" else "file"
        return {"name": name, "size": node.size if kind == "file" else 0, "type": kind,
                "mtime": node.date, "created": node.date, "uri": node.uri}

    def info(self, path, **kwargs):
        name = self._strip_protocol(path)
        try:
            node, _ = self.client.node(self._node_path(name))
        except MeridianError as e:
            raise _missing(e, path) from None
        return self._entry(name, node)

    def ls(self, path, detail=True, **kwargs):
        name = self._strip_protocol(path)
        try:
            node, children = self.client.node(self._node_path(name), children=True)
        except MeridianError as e:
            raise _missing(e, path) from None
        if children is None:
            entries = [self._entry(name, node)]
        else:
            prefix = name + "/" if name else ""
            entries = [self._entry(prefix + c.name, c) for c in children]
        return entries if detail else [e["name"] for e in entries]

    def modified(self, path):
        return self.info(path)["mtime"]

    def created(self, path):
        return self.info(path)["created"]

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        name = self._strip_protocol(path)
        if "r" in mode:
            try:
                data = self.client.read_bytes(self._node_path(name))
            except MeridianError as e:
                raise _missing(e, path) from None
            f = io.BytesIO(data)
            f.name = name
            return f
        if "a" in mode:
            f = _Upload(self, name)
            if self.exists(name):
                f.write(self.cat_file(name))
            return f
        return _Upload(self, name)

    def cat_file(self, path, start=None, end=None, **kwargs):
        try:
            data = self.client.read_bytes(self._node_path(path))
        except MeridianError as e:
            raise _missing(e, path) from None
        return data[start:end]

    def pipe_file(self, path, value, **kwargs):
        self._store(self._strip_protocol(path), value)

    def _store(self, name, data):
        """Stores ``data`` at ``name``, making missing directories above it (as object
        stores do)."""
        try:
            self.client.write_bytes(self._node_path(name), data)
        except MeridianError as e:
            parent = name.rpartition("/")[0]
            if e.status != 404 or not parent or self.exists(parent):
                raise
            self.makedirs(parent, exist_ok=True)
            self.client.write_bytes(self._node_path(name), data)
        self.invalidate_cache(name)

    def mkdir(self, path, create_parents=True, **kwargs):
        name = self._strip_protocol(path)
        parts = [p for p in name.split("/") if p]
        todo = [name] if not create_parents else ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        for p in todo:
            if create_parents and self.exists(p):
                continue
            self.client.make_container(self._node_path(p))
        self.invalidate_cache(name)

    def makedirs(self, path, exist_ok=False):
        if self.exists(path):
            if not exist_ok:
                raise FileExistsError(17, "it exists already", path)
            return
        self.mkdir(path, create_parents=True)

    def _rm(self, path):
        name = self._strip_protocol(path)
        try:
            self.client.delete_node(self._node_path(name))
        except MeridianError as e:
            raise _missing(e, path) from None
        self.invalidate_cache(name)

    def rm_file(self, path):
        self._rm(path)

    def rmdir(self, path):
        if self.ls(path, detail=False):
            raise OSError(39, "the directory is not empty", path)
        self._rm(path)

    def rm(self, path, recursive=False, maxdepth=None):
        # The service deletes a directory with what it holds, in one call.
        for p in (path if isinstance(path, (list, tuple)) else [path]):
            if not recursive and self.isdir(p) and self.ls(p, detail=False):
                raise OSError(39, "the directory is not empty (give recursive=True)", p)
            self._rm(p)

    def cp_file(self, path1, path2, **kwargs):
        self.client.transfer(self._node_path(path1), self._node_path(path2), keep=True)
        self.invalidate_cache(self._strip_protocol(path2))

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        self.client.transfer(self._node_path(path1), self._node_path(path2))
        self.invalidate_cache(self._strip_protocol(path1))
        self.invalidate_cache(self._strip_protocol(path2))
