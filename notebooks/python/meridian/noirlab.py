"""NOIRLab's clients pointed at Meridian: Data Lab's ``dl`` (astro-datalab) and
``sparclclient``, using the notebook's ``MERIDIAN_URL`` and ``MERIDIAN_TOKEN``.

:func:`configure_dl` points whatever ``dl`` modules are imported at Meridian's ``/auth``,
``/query`` and ``/storage`` and makes the user's token the one ``dl`` sends when a call
names none; :func:`configure_sparcl` makes ``SparclClient()`` open Meridian's ``/sparcl``
signed in with the token. The kernels do both when the clients are imported
(:mod:`meridian.kernel`); elsewhere call :func:`meridian.datalab` and
:func:`meridian.sparcl`.

How ``dl`` finds a token: each module imports ``def_token`` from ``dl.Util``, which,
called without a token, reads ``~/.datalab/dl.conf`` and ``~/.datalab/id_token.<user>``
(written by ``authClient.login``) and otherwise answers the anonymous token. Rather than
writing a login into the home directory (shared with any real Data Lab login of the same
account), each module's ``def_token`` is wrapped: no token given means the Meridian token;
a token (or user name) given explicitly is looked up as ``dl`` always did.

The service URLs are held in several places: ``authClient.ac_client.svc_url``,
``queryClient.qc_client.svc_url`` and ``.sm_svc_url``, ``storeClient.sc_client.svc_url``
and ``.qm_svc_url``, and the defaults of the ``isAlive`` functions. Importing
``queryClient`` sets ``storeClient``'s URL back to NOIRLab's, which is why the
configuration is applied again after each ``dl`` module is imported.
"""

import datetime
import functools
import sys

#: The Data Lab services and where Meridian serves them.
DL_SERVICES = {
    "dl.authClient": "/auth",
    "dl.queryClient": "/query",
    "dl.storeClient": "/storage",
}


def _client(client):
    if client is not None:
        return client
    import meridian

    return meridian.client()


def _meridian_def_token(original, client):
    """``dl.Util.def_token`` answering the Meridian token when no token is given."""

    @functools.wraps(original)
    def def_token(tok=None):
        if (tok is None or tok == "") and client.token:
            return client.token
        return original(tok)

    def_token._meridian_original = original
    return def_token


def _set_default_url(func, url):
    """Replaces the first default of ``func`` (an ``isAlive``'s ``svc_url``) by ``url``."""
    func = getattr(func, "__func__", func)
    defaults = getattr(func, "__defaults__", None)
    if defaults and isinstance(defaults[0], str) and defaults[0].startswith("http"):
        func.__defaults__ = (url,) + defaults[1:]


def configure_dl(client=None):
    """Points the imported ``dl`` modules (any of them; call again after importing more)
    at Meridian and its token. Returns the base URL used."""
    c = _client(client)
    base = c.url
    urls = {name: base + path for name, path in DL_SERVICES.items()}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "dl" or name.startswith("dl.")):
            continue
        current = mod.__dict__.get("def_token")
        if callable(current):
            original = getattr(current, "_meridian_original", current)
            mod.def_token = _meridian_def_token(original, c)
    ac = sys.modules.get("dl.authClient")
    if ac is not None and hasattr(ac, "ac_client"):
        ac.set_svc_url(urls["dl.authClient"])
        ac.DEF_SERVICE_URL = urls["dl.authClient"]
        ac.QM_SERVICE_URL = urls["dl.queryClient"]
        ac.SM_SERVICE_URL = urls["dl.storeClient"]
        _set_default_url(ac.isAlive, urls["dl.authClient"])
        _set_default_url(ac.authClient.isAlive, urls["dl.authClient"])
    qc = sys.modules.get("dl.queryClient")
    if qc is not None and hasattr(qc, "qc_client"):
        qc.set_svc_url(urls["dl.queryClient"])
        qc.qc_client.sm_svc_url = urls["dl.storeClient"]
        qc.DEF_SERVICE_URL = urls["dl.queryClient"]
        qc.SM_SERVICE_URL = urls["dl.storeClient"]
        _set_default_url(qc.isAlive, urls["dl.queryClient"])
    sc = sys.modules.get("dl.storeClient")
    if sc is not None and hasattr(sc, "sc_client"):
        sc.set_svc_url(urls["dl.storeClient"])
        sc.sc_client.qm_svc_url = urls["dl.queryClient"]
        sc.DEF_SERVICE_URL = urls["dl.storeClient"]
        sc.QM_SERVICE_URL = urls["dl.queryClient"]
        _set_default_url(sc.isAlive, urls["dl.storeClient"])
        _set_default_url(sc.set_svc_url, urls["dl.storeClient"])
    return base


def datalab(client=None):
    """Imports Data Lab's ``authClient``, ``queryClient`` and ``storeClient`` (all of them
    first: importing ``queryClient`` resets ``storeClient``'s URL), points them at
    Meridian with the user's token, and returns the three modules."""
    from dl import authClient, queryClient, storeClient

    configure_dl(client)
    return authClient, queryClient, storeClient


def sparcl_url(client=None):
    """The SPARCL API root ``SparclClient(url=...)`` takes: ``<MERIDIAN_URL>/sparcl``."""
    return _client(client).url + "/sparcl"


def sign_in_sparcl(sparcl_client, client=None):
    """Makes ``sparcl_client`` (a ``SparclClient``) send the Meridian token. The client
    sends its token as the whole ``Authorization`` header, and Meridian's SPARCL API takes
    ``Bearer <token>`` there; the client is told the token never expires (Meridian
    answers an expired or revoked token with its own message), so it never tries to renew
    it."""
    c = _client(client)
    if c.token:
        sparcl_client.token = f"Bearer {c.token}"
        sparcl_client.refresh_token = None
        sparcl_client.renew_token = None
        sparcl_client.token_exp = datetime.datetime(9999, 1, 1)
    return sparcl_client


def configure_sparcl(client=None):
    """Makes ``SparclClient()`` default to Meridian's SPARCL API and sign in with the
    Meridian token whenever it is opened on it (``sparcl.client`` must be importable)."""
    c = _client(client)
    from sparcl.client import SparclClient

    init = SparclClient.__init__
    original = getattr(init, "_meridian_original", init)
    url = sparcl_url(c)
    if original.__kwdefaults__ is not None and "url" in original.__kwdefaults__:
        original.__kwdefaults__ = {**original.__kwdefaults__, "url": url}

    @functools.wraps(original)
    def __init__(self, *args, **kw):
        original(self, *args, **kw)
        if getattr(self, "rooturl", "").rstrip("/") == url:
            sign_in_sparcl(self, c)

    __init__._meridian_original = original
    SparclClient.__init__ = __init__
    return url


def sparcl(client=None, **kw):
    """A ``sparcl.client.SparclClient`` of Meridian's SPARCL API, signed in with the
    user's token. Keyword arguments go to ``SparclClient`` (``announcement`` is False
    unless given)."""
    c = _client(client)
    from sparcl.client import SparclClient

    kw.setdefault("announcement", False)
    kw.setdefault("url", sparcl_url(c))
    return sign_in_sparcl(SparclClient(**kw), c)
