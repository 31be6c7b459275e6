"""Meridian from a notebook, over the service's public HTTP API.

The notebook server is started with ``MERIDIAN_URL`` (the service's base URL, as
``http://host:port``) and ``MERIDIAN_TOKEN`` (the user's token) in its environment, so
nothing here asks for a login::

    import meridian
    meridian.whoami()                       # {'user': 'ada', 'scopes': [...], ...}
    t = meridian.query("SELECT TOP 10 source_id, ra, dec FROM gaia")   # astropy Table
    tap = meridian.tap()                    # pyvo.dal.TAPService, token included
    job = tap.submit_job("SELECT ...")      # ... async jobs, uploads: pyvo's API
    meridian.sia().search(pos=(150.1, 2.2, 0.1))       # SIA 2.0 (pyvo)
    meridian.ssa().search(pos=(217.0, 3.27), diameter=0.3)   # SSA (pyvo)

    meridian.vos.ls("notebooks")            # the user's storage (VOSpace home)
    meridian.vos.put("cmd.png", "plots/")   # a local file into storage
    meridian.vos.get("plots/cmd.png", "copy.png")
    meridian.vos.ls("team://")              # a group's space

    meridian.mydb.save("bright", t)         # a table (astropy, pandas, or a file) into MyDB
    meridian.mydb.save_query("north", "SELECT * FROM gaia WHERE dec > 70")
    meridian.query("SELECT COUNT(*) AS n FROM mydb.north")
    meridian.mydb.list(); meridian.mydb.drop("north")

    ac, qc, sc = meridian.datalab()         # Data Lab's dl clients, pointed at Meridian
    qc.query(sql="SELECT ...", fmt="pandas")    # ... with the user's token
    sparcl = meridian.sparcl()              # sparclclient's SparclClient, signed in
    sparcl.find(constraints={"spectype": ["QSO"]})

In the notebook hub's kernels, importing ``dl`` or ``sparcl.client`` does the same by
itself (:mod:`meridian.kernel`), so Data Lab's own notebooks run unchanged.

Storage names are Data Lab's and Meridian's CLI's: ``vos://path`` or ``path`` is in the
user's home, ``<space>://path`` in another space (a group's, or a user's public files),
and a full node URI ``vos://meridian!vospace/<space>/path`` names any node.

Every refusal of the service raises :class:`MeridianError` with the HTTP status and the
service's own message. :class:`Client` does the same for any URL and token.
"""

import io
import os
import threading
import urllib.parse
import warnings
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import requests

__all__ = [
    "Client",
    "MeridianError",
    "client",
    "session",
    "whoami",
    "tap",
    "query",
    "sia",
    "ssa",
    "vos",
    "mydb",
    "datalab",
    "sparcl",
]

__version__ = "0.1.0"

VOS_NS = "http://www.ivoa.net/xml/VOSpace/v2.0"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
CORE = "ivo://ivoa.net/vospace/core"
AUTHORITY = "meridian!vospace"
HTTP_PUT = CORE + "#httpput"
_NS = {"vos": VOS_NS, "uws": UWS_NS}

#: The HTTP status VOSpace gives each of its faults (a transfer job reports the fault by
#: name only).
FAULT_STATUS = {
    "NodeNotFound": 404,
    "ContainerNotFound": 404,
    "DuplicateNode": 409,
    "PermissionDenied": 403,
    "QuotaExceeded": 413,
    "InvalidURI": 400,
    "InvalidArgument": 400,
    "TypeNotSupported": 400,
    "ProtocolNotSupported": 400,
    "InternalFault": 500,
}

# Chunks of a MyDB upload (Data Lab's chunked /storage/xfer).
_XFER_CHUNK = 16 << 20


class MeridianError(Exception):
    """A refusal or failure of the service: ``status`` (the HTTP status, 0 when the
    service could not be reached or is not configured) and ``message`` (the service's own
    words)."""

    def __init__(self, status, message, url=None):
        super().__init__(status, message, url)
        self.status = status
        self.message = message
        self.url = url

    def __str__(self):
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


def error_message(response):
    """The service's message in a refused response: a DALI/VOTable error document, a UWS
    error summary, JSON (``message``, ``error_description``, ``error``), or text (Data
    Lab's ``Error: ...`` and VOSpace's ``Fault: ...``)."""
    body = response.content[: 1 << 16]
    ctype = response.headers.get("Content-Type", "")
    text = body.decode("utf-8", "replace").strip()
    if "json" in ctype:
        try:
            j = response.json()
        except ValueError:
            j = None
        if isinstance(j, dict):
            for key in ("message", "error_description", "detail", "error"):
                if j.get(key):
                    return str(j[key])
    if text.startswith("<"):
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            root = None
        if root is not None:
            for el in root.iter():
                tag = el.tag.rsplit("}", 1)[-1]
                if tag == "INFO" and el.get("name") == "QUERY_STATUS" and el.get("value") == "ERROR":
                    return (el.text or "").strip() or text
                if tag == "message" and el.text:
                    return el.text.strip()
            words = " ".join(t.strip() for t in root.itertext() if t.strip())
            if words:
                return words
    if text.startswith("Error: "):
        text = text[len("Error: "):]
    return text or response.reason or f"HTTP {response.status_code}"


def _iso(text):
    """A VOSpace date (ISO 8601, UTC) as an aware datetime (None when absent)."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _join(space, rel):
    segs = [s for s in rel.split("/") if s]
    return "/".join([space] + segs)


class Node(dict):
    """A storage node as VOSpace describes it: ``path`` (``space/dir/name``), ``name``,
    ``uri``, ``type`` (``container``, ``data`` or ``link``), ``size`` (bytes),
    ``date`` (datetime), ``owner``, ``target`` (links), ``properties`` (all of them, by
    URI). Attributes read the keys."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _node_of(el):
    uri = el.get("uri", "")
    rest = uri.split("://", 1)[-1]
    head, _, path = rest.partition("/")
    if "!" not in head:
        path = rest
    kind = el.get(XSI_TYPE, "").rsplit(":", 1)[-1]
    props = {}
    ps = el.find("vos:properties", _NS)
    if ps is not None:
        for p in ps.findall("vos:property", _NS):
            props[p.get("uri")] = (p.text or "").strip()
    target = el.find("vos:target", _NS)
    return Node(
        path=path,
        name=path.rsplit("/", 1)[-1],
        uri=uri,
        type={"ContainerNode": "container", "LinkNode": "link"}.get(kind, "data"),
        size=int(props.get(CORE + "#length") or 0),
        date=_iso(props.get(CORE + "#date")),
        owner=props.get(CORE + "#creator"),
        target=(target.text or "").strip() if target is not None else None,
        properties=props,
    )


def parse_node(xml_bytes):
    """A VOSpace node document as (:class:`Node`, its children as Nodes, or None for a
    data node)."""
    root = ET.fromstring(xml_bytes)
    node = _node_of(root)
    nodes = root.find("vos:nodes", _NS)
    children = None
    if nodes is not None or node.type == "container":
        children = [_node_of(c) for c in (nodes if nodes is not None else [])]
    return node, children


class Client:
    """Meridian at ``url`` as the holder of ``token`` (by default ``MERIDIAN_URL`` and
    ``MERIDIAN_TOKEN`` from the environment). ``timeout`` is in seconds, per request."""

    def __init__(self, url=None, token=None, session=None, timeout=600):
        url = url if url is not None else os.environ.get("MERIDIAN_URL", "")
        if not url:
            raise MeridianError(
                0, "MERIDIAN_URL is not set: give Meridian's URL (http://host:port), as the "
                "notebook server does")
        url = url.strip().rstrip("/")
        if url.endswith("/tap"):
            url = url[: -len("/tap")]
        self.url = url
        self.token = token if token is not None else os.environ.get("MERIDIAN_TOKEN", "")
        self.timeout = timeout
        self._session = session
        self._user = None
        self._lock = threading.Lock()
        self.vos = Vos(self)
        self.mydb = MyDB(self)

    def __repr__(self):
        return f"meridian.Client({self.url!r})"

    # -- HTTP ---------------------------------------------------------------------------

    @property
    def session(self):
        """A ``requests.Session`` that sends ``Authorization: Bearer <token>``."""
        with self._lock:
            if self._session is None:
                s = requests.Session()
                if self.token:
                    s.headers["Authorization"] = f"Bearer {self.token}"
                s.headers["User-Agent"] = f"meridian-notebooks/{__version__}"
                self._session = s
            return self._session

    def request(self, method, path, **kw):
        """``method`` on ``path`` (under the service's URL, or a full URL); raises
        :class:`MeridianError` unless the answer is 2xx (or 3xx when redirects are not
        followed)."""
        url = path if "://" in path else self.url + path
        kw.setdefault("timeout", self.timeout)
        try:
            r = self.session.request(method, url, **kw)
        except requests.Timeout as e:
            raise MeridianError(504, f"Meridian did not answer {method} {url} in time: {e}", url) from e
        except requests.ConnectionError as e:
            raise MeridianError(502, f"Meridian at {self.url} cannot be reached: {e}", url) from e
        if r.status_code >= 400:
            raise MeridianError(r.status_code, error_message(r), url)
        return r

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    # -- accounts -----------------------------------------------------------------------

    def whoami(self):
        """The token's user, scopes and expiry (``/api/auth/whoami``)."""
        return self.get("/api/auth/whoami").json()

    @property
    def user(self):
        """The token's user name (asked once)."""
        if self._user is None:
            self._user = self.whoami()["user"]
        return self._user

    def groups(self):
        """The user's groups, ``[{'name', 'role'}]`` (invitations not yet accepted left
        out)."""
        return [g for g in self.get("/api/groups").json() if not g.get("invited")]

    # -- queries ------------------------------------------------------------------------

    def tap(self):
        """``pyvo.dal.TAPService`` of Meridian's TAP, sending the token."""
        import pyvo

        return pyvo.dal.TAPService(self.url + "/tap", session=self.session)

    def sia(self, collection=None):
        """``pyvo.dal.SIA2Service`` of Meridian's images (one collection's, when named)."""
        import pyvo

        base = self.url + "/sia" + (f"/{urllib.parse.quote(collection, safe='')}" if collection else "")
        return pyvo.dal.SIA2Service(base, session=self.session)

    def ssa(self):
        """``pyvo.dal.SSAService`` of Meridian's spectra."""
        import pyvo

        return pyvo.dal.SSAService(self.url + "/ssa", session=self.session)

    def datalab(self):
        """Data Lab's ``authClient``, ``queryClient`` and ``storeClient`` modules pointed at
        this service, sending this token when a call gives none (see
        :mod:`meridian.noirlab`; needs ``astro-datalab``)."""
        from meridian import noirlab

        return noirlab.datalab(self)

    def sparcl(self, **kw):
        """``sparcl.client.SparclClient`` of this service's SPARCL API, signed in with this
        token (needs ``sparclclient``)."""
        from meridian import noirlab

        return noirlab.sparcl(self, **kw)

    def query(self, adql, *, lang="ADQL", maxrec=None, uploads=None, timeout=None, **params):
        """Runs ``adql`` synchronously over TAP (``/tap/sync``) and returns an astropy
        Table. ``lang`` may be ``SQL``; ``maxrec`` caps the rows (the service's default
        otherwise: a cut result warns); ``uploads`` maps table names to astropy Tables,
        pandas DataFrames, VOTable bytes or file paths, queried as ``TAP_UPLOAD.<name>``;
        other keyword arguments are sent as TAP parameters (``RUNID=...``)."""
        from astropy.io.votable import parse

        data = {"REQUEST": "doQuery", "LANG": lang, "QUERY": adql, "FORMAT": "votable"}
        if maxrec is not None:
            data["MAXREC"] = str(int(maxrec))
        data.update({k.upper(): str(v) for k, v in params.items()})
        files = None
        if uploads:
            files = {}
            for name, table in uploads.items():
                files[name] = (f"{name}.xml", _votable_bytes(table), "application/x-votable+xml")
            data["UPLOAD"] = ";".join(f"{n},param:{n}" for n in uploads)
        r = self.request("POST", "/tap/sync", data=data, files=files, timeout=timeout or self.timeout)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vot = parse(io.BytesIO(r.content))
        status = None
        infos = list(vot.infos)
        for res in vot.resources:
            infos += list(res.infos)
        for info in infos:
            if info.name == "QUERY_STATUS":
                status = info
        if status is not None and status.value == "ERROR":
            raise MeridianError(r.status_code, (status.content or "").strip() or "the query failed", r.url)
        table = vot.get_first_table().to_table(use_names_over_ids=True)
        if status is not None and status.value == "OVERFLOW":
            table.meta["overflow"] = True
            warnings.warn(
                f"the result was cut at {len(table)} rows (MAXREC); give maxrec= for more",
                stacklevel=2)
        return table

    # -- storage names ------------------------------------------------------------------

    def node_path(self, name):
        """The node path (``space/dir/name``) a storage name means: ``vos://p`` or ``p``
        in the user's home, ``<space>://p`` in that space, ``vos://meridian!vospace/s/p``
        as it says."""
        name = str(name).strip()
        if name.startswith("vos://"):
            rest = name[len("vos://"):]
            head, _, tail = rest.partition("/")
            if "!" in head:
                space, _, rel = tail.strip("/").partition("/")
                return _join(space, rel)
            return _join(self.user, rest)
        if "://" in name:
            space, rest = name.split("://", 1)
            return _join(space, rest)
        return _join(self.user, name)

    @staticmethod
    def node_url(path):
        return "/vospace/nodes/" + urllib.parse.quote(path, safe="/")

    @staticmethod
    def node_uri(path):
        return f"vos://{AUTHORITY}/{path}"

    # -- nodes (VOSpace) ----------------------------------------------------------------

    def node(self, path, children=False):
        """The node at ``path`` and, with ``children``, its children (as
        :func:`parse_node`)."""
        r = self.get(self.node_url(path), params={"detail": "max" if children else "properties"})
        return parse_node(r.content)

    def make_container(self, path):
        doc = (f'<vos:node xmlns:vos="{VOS_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
               f'xsi:type="vos:ContainerNode" uri="{_xml_attr(self.node_uri(path))}">'
               "<vos:properties/></vos:node>")
        r = self.request("PUT", self.node_url(path), data=doc.encode(),
                         headers={"Content-Type": "text/xml"})
        return parse_node(r.content)[0]

    def delete_node(self, path):
        """Deletes ``path`` and everything below it."""
        self.request("DELETE", self.node_url(path))

    def read_bytes(self, path):
        """The bytes of data node ``path`` (a link's target's)."""
        return self.get("/vospace/files/" + urllib.parse.quote(path, safe="/")).content

    def open_stream(self, path):
        return self.get("/vospace/files/" + urllib.parse.quote(path, safe="/"), stream=True)

    def write_bytes(self, path, data):
        """Stores ``data`` (bytes, or a binary file object) as data node ``path``, replacing
        its bytes whole (the service keeps the old bytes until every new one is stored):
        a VOSpace ``pushToVoSpace`` transfer, then the bytes to its endpoint."""
        r = self.request(
            "POST", "/vospace/synctrans",
            data={"TARGET": self.node_uri(path), "DIRECTION": "pushToVoSpace",
                  "PROTOCOL": HTTP_PUT, "REQUEST": "redirect"},
            allow_redirects=False)
        endpoint = r.headers.get("Location")
        if r.status_code != 303 or not endpoint:
            raise MeridianError(r.status_code, "the service offered no upload endpoint", r.url)
        self.request("PUT", self._local(endpoint), data=data,
                     headers={"Content-Type": "application/octet-stream"})

    def _local(self, endpoint):
        """A transfer endpoint at the URL this client reaches the service by (the service
        names its public URL, which a notebook server inside a cluster may not reach)."""
        path = urllib.parse.urlsplit(endpoint).path
        if path.startswith("/storage/xfer/"):
            return self.url + path
        return endpoint

    def transfer(self, src, dst, keep=False):
        """Moves (or, with ``keep``, copies) node ``src`` to ``dst`` (into ``dst`` when that
        is a container): a VOSpace transfer job, run at once. Returns the new node's
        path."""
        doc = (f'<vos:transfer xmlns:vos="{VOS_NS}" version="2.1">'
               f"<vos:target>{_xml_text(self.node_uri(src))}</vos:target>"
               f"<vos:direction>{_xml_text(self.node_uri(dst))}</vos:direction>"
               f"<vos:keepBytes>{'true' if keep else 'false'}</vos:keepBytes></vos:transfer>")
        r = self.request("POST", "/vospace/transfers", params={"PHASE": "RUN"}, data=doc.encode(),
                         headers={"Content-Type": "text/xml"}, allow_redirects=False)
        job = r.headers.get("Location")
        if not job:
            raise MeridianError(r.status_code, "the service did not create a transfer job", r.url)
        root = ET.fromstring(self.get(urllib.parse.urlsplit(job).path).content)
        phase = (root.findtext("uws:phase", "", _NS) or "").strip()
        if phase == "ERROR":
            message = (root.findtext(".//uws:errorSummary/uws:message", "", _NS) or "").strip()
            fault = message.split(":", 1)[0]
            raise MeridianError(FAULT_STATUS.get(fault, 400), message or "the transfer failed", job)
        if phase != "COMPLETED":
            raise MeridianError(500, f"the transfer job ended in phase {phase or '?'}", job)
        for res in root.iter(f"{{{UWS_NS}}}result"):
            if res.get("id") == "dataNode":
                href = res.get("{http://www.w3.org/1999/xlink}href", "")
                return href.split(f"{AUTHORITY}/", 1)[-1]
        return dst


def _xml_text(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_attr(s):
    return _xml_text(s).replace('"', "&quot;")


def _votable_bytes(table):
    """VOTable bytes of an astropy Table, a pandas DataFrame, a file path or bytes."""
    if isinstance(table, (bytes, bytearray)):
        return bytes(table)
    if isinstance(table, (str, os.PathLike)):
        with open(table, "rb") as f:
            return f.read()
    from astropy.table import Table

    if not isinstance(table, Table):
        table = Table.from_pandas(table)
    buf = io.BytesIO()
    table.write(buf, format="votable")
    return buf.getvalue()


class Vos:
    """The user's files (VOSpace home, groups' spaces) through ``/vospace``."""

    def __init__(self, client):
        self._c = client

    def ls(self, name="vos://", long=False):
        """The names in container ``name`` (a data node lists as itself); with ``long``,
        :class:`Node` dicts with type, size and date."""
        node, children = self._c.node(self._c.node_path(name), children=True)
        items = children if children is not None else [node]
        return items if long else [n.name for n in items]

    def stat(self, name):
        """The :class:`Node` ``name`` names."""
        return self._c.node(self._c.node_path(name))[0]

    def exists(self, name):
        try:
            self.stat(name)
            return True
        except MeridianError as e:
            if e.status == 404:
                return False
            raise

    def isdir(self, name):
        try:
            return self.stat(name).type == "container"
        except MeridianError as e:
            if e.status == 404:
                return False
            raise

    def mkdir(self, name, parents=False):
        """Creates container ``name``; with ``parents``, its missing parents too and no
        error when it exists (``mkdir -p``)."""
        path = self._c.node_path(name)
        if not parents:
            return self._c.make_container(path)
        space, *segs = path.split("/")
        at = space
        for seg in segs:
            at = f"{at}/{seg}"
            try:
                self._c.make_container(at)
            except MeridianError as e:
                if e.status != 409:
                    raise
                if self._c.node(at)[0].type != "container":
                    raise MeridianError(409, f"{at} exists and is not a container", e.url) from e
        return self._c.node(path)[0]

    def _dest(self, name, base):
        """``name``'s node path, inside it when it is a container (or ends with /)."""
        path = self._c.node_path(name)
        if str(name).endswith("/") or str(name).endswith("://") or self.isdir(name):
            return f"{path}/{base}"
        return path

    def put(self, local, name="vos://"):
        """Copies the local file ``local`` to ``name`` (into it, when a container).
        Returns the node path written."""
        path = self._dest(name, os.path.basename(str(local)))
        with open(local, "rb") as f:
            self._c.write_bytes(path, f)
        return path

    def put_bytes(self, name, data):
        """Stores ``data`` (bytes or str) as file ``name``."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        path = self._c.node_path(name)
        self._c.write_bytes(path, data)
        return path

    def get(self, name, local=None):
        """The bytes of file ``name``; with ``local`` (a path, or a directory), written
        there instead (complete or not at all), and its path returned."""
        path = self._c.node_path(name)
        if local is None:
            return self._c.read_bytes(path)
        local = str(local)
        if os.path.isdir(local):
            local = os.path.join(local, path.rsplit("/", 1)[-1])
        r = self._c.open_stream(path)
        tmp = f"{local}.part-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return local

    def delete(self, name):
        """Deletes ``name`` (a container with everything in it)."""
        self._c.delete_node(self._c.node_path(name))

    rm = delete

    def mv(self, src, dst):
        """Moves (renames) ``src`` to ``dst``, into it when it is a container."""
        return self._c.transfer(self._c.node_path(src), self._c.node_path(dst))

    def cp(self, src, dst):
        """Copies ``src`` to ``dst``, into it when it is a container."""
        return self._c.transfer(self._c.node_path(src), self._c.node_path(dst), keep=True)


class MyDB:
    """The user's own tables, queried as ``mydb.<name>`` (Data Lab's MyDB calls under
    ``/query`` and ``/storage/xfer``)."""

    def __init__(self, client):
        self._c = client

    def _call(self, call, **params):
        return self._c.get(f"/query/{call}", params=params).text

    def list(self):
        """The names of the user's tables."""
        return [n for n in self._call("list").splitlines() if n.strip()]

    def columns(self, name):
        """``[(column, type)]`` of table ``name``."""
        text = self._call("list", table=name)
        if text.startswith("relation "):
            raise MeridianError(404, f"no MyDB table '{name}'", self._c.url + "/query/list")
        return [tuple(line.split(",", 1)) for line in text.splitlines() if line.strip()]

    def get(self, name, maxrec=None):
        """Table ``name`` as an astropy Table."""
        return self._c.query(f"SELECT * FROM mydb.{name}", maxrec=maxrec)

    def save(self, name, data, replace=False):
        """Keeps ``data`` as table ``name``: an astropy Table, a pandas DataFrame, or a local
        CSV (with a header line), FITS, VOTable or Parquet file. An existing table is an
        error unless ``replace``."""
        if isinstance(data, (str, os.PathLike)):
            # The staging area takes letters, digits, '.', '_' and '-' (the format is read
            # from the content).
            base = os.path.basename(str(data))
            fname = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_"
                            for c in base).lstrip(".") or "upload"
            with open(data, "rb") as f:
                self._upload(fname, f)
        else:
            fname = f"{name}.xml"
            self._upload(fname, io.BytesIO(_votable_bytes(data)))
        if replace and name in self.list():
            self.drop(name)
        self._call("import", table=name, filename=fname)

    def _upload(self, fname, f):
        first = True
        while True:
            chunk = f.read(_XFER_CHUNK)
            if not chunk and not first:
                break
            self._c.request("POST", "/storage/xfer", data=chunk,
                            headers={"X-DL-FileName": fname, "X-DL-InitXfer": str(first),
                                     "Content-Type": "application/octet-stream"})
            first = False
            if len(chunk) < _XFER_CHUNK:
                break

    def save_query(self, name, query, replace=False, lang="ADQL"):
        """Runs ``query`` on the service and keeps its result as table ``name``. Returns
        the rows written."""
        key = "sql" if lang.upper() == "SQL" else "adql"
        text = self._call("query", **{key: query, "out": f"mydb://{name}",
                                      "drop": "True" if replace else "False"})
        try:
            return int(text.split("OK:", 1)[1].split()[0])
        except (IndexError, ValueError):
            return None

    def drop(self, name):
        """Drops table ``name``."""
        self._call("delete", table=name)


# -- the notebook's own client ------------------------------------------------------------

_default = None
_default_lock = threading.Lock()


def client():
    """The :class:`Client` of ``MERIDIAN_URL`` and ``MERIDIAN_TOKEN`` (made once)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
        return _default


def session():
    """A ``requests.Session`` sending the user's token (``Authorization: Bearer``)."""
    return client().session


def whoami():
    """The user, scopes and token expiry."""
    return client().whoami()


def tap():
    """``pyvo.dal.TAPService`` of Meridian's TAP with the user's token."""
    return client().tap()


def query(adql, **kw):
    """A synchronous TAP query as an astropy Table (see :meth:`Client.query`)."""
    return client().query(adql, **kw)


def sia(collection=None):
    """``pyvo.dal.SIA2Service`` of Meridian's images."""
    return client().sia(collection)


def ssa():
    """``pyvo.dal.SSAService`` of Meridian's spectra."""
    return client().ssa()


def datalab():
    """Data Lab's ``(authClient, queryClient, storeClient)`` modules, pointed at Meridian
    with the user's token (:meth:`Client.datalab`)."""
    return client().datalab()


def sparcl(**kw):
    """A ``SparclClient`` of Meridian's SPARCL API with the user's token
    (:meth:`Client.sparcl`)."""
    return client().sparcl(**kw)


class _Deferred:
    """``meridian.vos`` and ``meridian.mydb``: the default client's, made when first
    used (so importing needs no environment)."""

    def __init__(self, attr):
        self._attr = attr

    def __getattr__(self, key):
        return getattr(getattr(client(), self._attr), key)

    def __dir__(self):
        return [k for k in dir(Vos if self._attr == "vos" else MyDB) if not k.startswith("_")]


vos = _Deferred("vos")
mydb = _Deferred("mydb")


def _register_fsspec():
    """``vos://`` URLs for fsspec (pandas, astropy, ...): :mod:`meridian.fs`. The installed
    package declares it as an entry point too; this covers a package run from its source."""
    try:
        import fsspec
    except ImportError:
        return
    fsspec.register_implementation("vos", "meridian.fs.VosFileSystem", clobber=True)


_register_fsspec()
