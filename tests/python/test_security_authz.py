"""Authorization audit of every route of the HTTP service.

`ROUTES` below names every route of `crates/server/src/lib.rs` (`router`) with its methods,
and every Data Lab sub-call of `/storage/{call}`, `/query/{call}` and `/auth/{call}`: either
as public (with the reason it may be), or as private, with the requests that reach a user's
data through it. The first tests read the Rust sources and fail when a route, a method or a
sub-call has no entry here, so that a new one cannot go unaudited.

For every private entry, user "alice" owns the data it reaches: a VOSpace directory with a
file, an empty directory, a MyDB table, a group (with carol as a member) and its table,
three asynchronous TAP jobs (pending, completed, failed), a VOSpace transfer job and a
negotiated synchronous transfer. Each request is then made by callers who must not act on
that data:

- `anonymous`: no credentials;
- `bob`: another user, with a token of every user scope;
- `scoped`: alice, with a token of `catalogs:read` only (only for entries that need a scope
  that token lacks: `storage:write` or `jobs:run`);
- `expired`: alice, with a token that has expired;
- `xsite`: alice's valid login cookie on a request the browser marks
  `Sec-Fetch-Site: cross-site` (a page of another site must not act as alice).

Each answer must be a refusal (401, 403, 404, or the statuses an entry names with its
reason), never 2xx/3xx and never 5xx, unless the entry says that the caller acts on their
own namespace there (`OWN`: bob listing his own tables) or that the call answers a denial in
a 200 (`DENY`: Data Lab's `access` answers `false`). Whatever the answer, alice's data must
be unchanged afterwards (compared before and after each request) and none of it may appear
in the answer. Alice herself, with a full token, then makes every request an entry marks,
which shows that the requests are well formed (what she changes is put back)."""

import hashlib
import http.cookiejar
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

import pytest
import requests

from conftest import Server, add_users, client, personal_env, run

SRC = Path(__file__).resolve().parents[2] / "crates" / "server" / "src"

VOS = "http://www.ivoa.net/xml/VOSpace/v2.0"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CORE = "ivo://ivoa.net/vospace/core"
VROOT = "vos://meridian!vospace"

# Alice's data. The marks are what must never reach anybody else.
MARK = uuid.uuid4().hex[:10]
FILE_MARK = f"TOPSECRET{MARK}"
FILE_BYTES = f"secret,n\n{FILE_MARK},1\n".encode()
COL_MARK = f"colsecret{MARK}"
JOB_MARK = f"jobsecret{MARK}"
DEST_MARK = f"destsecret{MARK}"
DIR, FILE, EMPTY = "secretqx", "planqx.txt", "emptyqx"
TABLE, GROUP, GTABLE = "vaultqx", "alicegrpqx", "gtqx"
FILTER, FILTER_MARK = "watchqx", f"filtersecret{MARK}"

# Callers.
ANON, BOB, SCOPED, EXPIRED, XSITE, OWNER = "anonymous", "bob", "scoped", "expired", "xsite", "alice"
ATTACKERS = [ANON, BOB, SCOPED, EXPIRED, XSITE]
# Each caller's requests come from an address of its own (password checks are throttled
# by address; these never reach alice's own budget at 127.0.0.1).
ADDRESS = {ANON: "127.0.0.11", BOB: "127.0.0.12", SCOPED: "127.0.0.13", EXPIRED: "127.0.0.14",
           XSITE: "127.0.0.15", OWNER: "127.0.0.16"}

# What an answer to a caller must be.
REFUSE, OWN, DENY = "refuse", "own", "deny"
REFUSED = {401, 403, 404}


# --------------------------------------------------------------------------------------
# The audit table.

@dataclass
class Call:
    method: str
    path: str
    params: Optional[dict] = None
    data: object = None
    headers: dict = field(default_factory=dict)


@dataclass
class Entry:
    route: str
    methods: tuple
    build: Callable
    sub: Optional[str] = None
    variant: str = ""
    public: Optional[str] = None  # the reason, for a public entry
    touches: tuple = ()  # files, table, jobs, group, transfer, account, filter
    scope: Optional[str] = None  # what the call needs beyond a login of the owner
    modes: dict = field(default_factory=dict)  # caller -> REFUSE (default), OWN, DENY
    refuse: tuple = ()  # statuses that count as refusals here besides 401/403/404
    deny: Optional[Callable] = None  # for DENY: the body of a 200 that refuses
    owner: Optional[Callable] = None  # checks alice's own answer
    owner_mutates: bool = False
    fresh: bool = False  # bob and the scoped caller use tokens of their own (a logout)
    follow: bool = False  # a 2xx answer is a transfer URL: use it as an attacker would

    @property
    def label(self):
        sub = f" {self.sub}" if self.sub else ""
        var = f" [{self.variant}]" if self.variant else ""
        return f"{'/'.join(self.methods)} {self.route}{sub}{var}"

    def mode(self, caller):
        return self.modes.get(caller, REFUSE)


def status_is(*codes, contains=(), check=None):
    """An owner check: the status is one of `codes` and the body holds `contains`."""
    def f(r, svc):
        assert r.status_code in codes, f"{r.status_code}: {r.text[:500]}"
        body = r.text
        for c in (contains if isinstance(contains, (list, tuple)) else [contains]):
            c = c(svc) if callable(c) else c
            assert c in body, f"{c!r} not in {body[:500]!r}"
        if check:
            check(r, svc)
    return f


ok = status_is(200)


def get(path, **params):
    return lambda s, c: Call("GET", path.format(c=s.ctx), params=params or None)


def dl(route, sub, **params):
    """A Data Lab GET call (`/storage/ls?name=...`)."""
    return lambda s, c: Call("GET", f"{route}/{sub}",
                             params={k: (v(s, c) if callable(v) else v) for k, v in params.items()})


def node_doc(kind, path, props=()):
    p = "".join(f'<vos:property uri="{k}">{v}</vos:property>' for k, v in props)
    return (f'<vos:node xmlns:vos="{VOS}" xmlns:xsi="{XSI}" xsi:type="vos:{kind}" '
            f'uri="{VROOT}/{path}"><vos:properties>{p}</vos:properties></vos:node>')


def transfer_doc(target, direction, protocol=None, keep=False):
    proto = f'<vos:protocol uri="{protocol}"/>' if protocol else ""
    return (f'<vos:transfer xmlns:vos="{VOS}" version="2.1"><vos:target>{target}</vos:target>'
            f"<vos:direction>{direction}</vos:direction>{proto}"
            f"<vos:keepBytes>{str(keep).lower()}</vos:keepBytes></vos:transfer>")


XML = {"Content-Type": "text/xml"}
ALICE_FILE = f"alice://{DIR}/{FILE}"
FILE_URI = f"{VROOT}/alice/{DIR}/{FILE}"


def later_iso(hours=2):
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def elsewhere(s, c, name):
    """Where a copy or move goes: bob's own space for bob (stealing), alice's otherwise."""
    return f"bob://{name}" if c == BOB else f"alice://{DIR}/{name}"


def job_path(attr, tail=""):
    return lambda s, c: f"/tap/async/{getattr(s.ctx, attr)}{tail}"


def job_get(attr, tail=""):
    return lambda s, c: Call("GET", job_path(attr, tail)(s, c))


def job_post(attr, tail, data):
    return lambda s, c: Call("POST", job_path(attr, tail)(s, c),
                             data=data() if callable(data) else data)


def content_is_file(r, svc):
    assert r.content == FILE_BYTES


def ticket_gives_file(r, svc):
    assert requests.get(r.text.strip()).content == FILE_BYTES


def xfer_ticket(kind):
    """A transfer URL of alice's (`get`: a download, `put`: an upload), its path only."""
    def build(s, c):
        r = s.A.get(f"{s.base}/storage/{kind}", params={"name": ALICE_FILE})
        assert r.status_code == 200, r.text
        return r.text.strip().split("/storage/xfer/", 1)[1]
    return build


def uws_redirect(r, svc):
    assert r.status_code == 303, f"{r.status_code}: {r.text[:300]}"


def filter_get(tail, **params):
    return lambda s, c: Call("GET", f"/api/alerts/filters/{s.ctx.filter_id}{tail}",
                             params=params or None)


READ_ONLY = "catalogs:read"  # the scoped caller's token

ROUTES = [
    # ---- public: no user's data is reached -------------------------------------------
    Entry("/health", ("GET",), get("/health"), public="liveness answer, no data"),
    Entry("/", ("GET",), get("/"),
          public="the web portal's page (its files hold no data; it calls the services above)"),
    Entry("/images/file", ("GET",), get("/images/file", ID="ivo://meridian/images/none?x"),
          public="the files of published image collections, found by their ObsCore DID only"),
    Entry("/images/header", ("GET",), get("/images/header", ID="ivo://meridian/images/none?x"),
          public="FITS headers of published images, found by their ObsCore DID only"),
    Entry("/images/coverage", ("GET",), get("/images/coverage", ID="ivo://meridian/images/none?x"),
          public="footprints (MOCs) of published images"),
    Entry("/preview", ("GET",), get("/preview", ID="ivo://meridian/images/none?x"),
          public="quick-look PNGs of published images"),
    Entry("/moc/{name}", ("GET",), get("/moc/none"),
          public="coverage (MOCs) of published catalogs and image collections"),
    Entry("/hips/list", ("GET",), get("/hips/list"), public="the list of published HiPS sky maps"),
    Entry("/hips/{name}/{*path}", ("GET",), get("/hips/none/properties"),
          public="tiles of published HiPS sky maps"),
    Entry("/hips2fits", ("GET", "POST"), get("/hips2fits", hips="none", width="10", height="10", ra="0",
                                             dec="0", fov="1"),
          public="images drawn from published HiPS sky maps"),
    Entry("/sia/query", ("GET", "POST"), get("/sia/query", POS="CIRCLE 10 10 1"),
          public="SIA 2.0 search of the published images (ObsCore rows)"),
    Entry("/sia/capabilities", ("GET",), get("/sia/capabilities"), public="VOSI capabilities"),
    Entry("/sia/availability", ("GET",), get("/sia/availability"), public="VOSI availability"),
    Entry("/sia/{collection}/query", ("GET", "POST"), get("/sia/none/query"),
          public="SIA 2.0 search of one published image collection"),
    Entry("/sia/{collection}/capabilities", ("GET",), get("/sia/none/capabilities"),
          public="VOSI capabilities of one collection's SIA service"),
    Entry("/sia/{collection}/availability", ("GET",), get("/sia/none/availability"),
          public="VOSI availability of one collection's SIA service"),
    Entry("/datalink", ("GET", "POST"), get("/datalink", ID="ivo://meridian/images/none?x"),
          public="DataLink links of published images"),
    Entry("/soda/sync", ("GET", "POST"), get("/soda/sync", ID="ivo://meridian/images/none?x"),
          public="SODA cutouts of published images"),
    # Spectra: published datasets for everybody; a private dataset only for the users and
    # groups its manifest lists (test_spectra_sparcl checks that with a private dataset).
    Entry("/ssa", ("GET", "POST"), get("/ssa", REQUEST="queryData", POS="10,10", SIZE="1"),
          public="SSA search of the published spectra"),
    Entry("/ssa/capabilities", ("GET",), get("/ssa/capabilities"), public="VOSI capabilities"),
    Entry("/lightcurve", ("GET", "POST"), get("/lightcurve", ID="1", SURVEY="synthetic"),
          public="light curves from the served catalogs (a fixed query; never a user's MyDB)"),
    Entry("/ssa/availability", ("GET",), get("/ssa/availability"), public="VOSI availability"),
    Entry("/spectra/file", ("GET",), get("/spectra/file", ID="ivo://meridian/spectra/NONE?x"),
          public="published spectra as SDM files, found by their DID"),
    Entry("/spectra/stack", ("GET", "POST"),
          get("/spectra/stack", QUERY="SELECT TOP 1 source_id FROM gaia"),
          public="stacks of published spectra selected by ADQL over the served catalogs "
                 "(never a user's MyDB)"),
    Entry("/metrics", ("GET",), get("/metrics"),
          public="service-wide request counters and job counts by phase; nobody's data"),
    Entry("/tap/availability", ("GET",), get("/tap/availability"), public="VOSI availability"),
    Entry("/tap/capabilities", ("GET",), get("/tap/capabilities"), public="VOSI capabilities"),
    Entry("/tap/tables", ("GET",), get("/tap/tables"),
          public="VOSI tables: the served catalogs only (no MyDB table is listed)"),
    Entry("/tap/tables/{name}", ("GET",), get("/tap/tables/gaia"),
          public="one served catalog's VOSI description"),
    Entry("/tap/examples", ("GET",), get("/tap/examples"), public="DALI examples document"),
    Entry("/tap/sync", ("GET",),
          get("/tap/sync", LANG="ADQL", FORMAT="csv", QUERY="SELECT TOP 3 source_id FROM gaia"),
          variant="public catalog",
          public="queries on the public catalogs are open to anonymous callers (TAP)"),
    Entry("/tap/sync", ("POST",),
          lambda s, c: Call("POST", "/tap/sync", data={
              "LANG": "ADQL", "FORMAT": "csv", "QUERY": "SELECT TOP 3 source_id FROM gaia"}),
          variant="public catalog",
          public="queries on the public catalogs are open to anonymous callers (TAP)"),
    Entry("/vospace/availability", ("GET",), get("/vospace/availability"), public="VOSI"),
    Entry("/vospace/capabilities", ("GET",), get("/vospace/capabilities"), public="VOSI"),
    Entry("/vospace/protocols", ("GET",), get("/vospace/protocols"),
          public="the transfer protocols the service speaks"),
    Entry("/vospace/views", ("GET",), get("/vospace/views"), public="the views offered"),
    Entry("/vospace/properties", ("GET",), get("/vospace/properties"),
          public="the property URIs the service knows"),
    Entry("/api/auth/login", ("POST",),
          lambda s, c: Call("POST", "/api/auth/login",
                            data={"username": "alice", "password": "not-her-password"}),
          public="the login itself: takes a password (wrong here), throttled"),
    Entry("/api/auth/register", ("POST",),
          lambda s, c: Call("POST", "/api/auth/register",
                            data={"username": "alice", "password": "taken-over-pw"}),
          public="self-registration (off in this service: 403); cannot take an existing name"),
    Entry("/.well-known/openid-configuration", ("GET",), get("/.well-known/openid-configuration"),
          public="where the OAuth endpoints are; no data"),
    Entry("/api/notebooks", ("GET",), get("/api/notebooks"),
          public="whether the notebook hub runs, and its address"),
    Entry("/oauth/authorize", ("GET",),
          get("/oauth/authorize", response_type="code", client_id="jupyterhub",
              redirect_uri="http://127.0.0.1:1/hub/oauth_callback"),
          public="sign-in through Meridian for registered clients only (none here: 400); "
                 "a code only ever goes to a registered client's registered address"),
    Entry("/oauth/token", ("POST",),
          lambda s, c: Call("POST", "/oauth/token", data={
              "grant_type": "authorization_code", "code": "x", "client_id": "jupyterhub",
              "client_secret": "wrong"}),
          public="a client trades a code for a token with its secret (wrong here: 401)"),
    Entry("/auth", ("GET",), get("/auth"), public="Data Lab liveness"),
    Entry("/auth/", ("GET",), get("/auth/"), public="Data Lab liveness"),
    Entry("/query", ("GET",), get("/query"), public="Data Lab liveness"),
    Entry("/query/", ("GET",), get("/query/"), public="Data Lab liveness"),
    Entry("/storage", ("GET",), get("/storage"), public="Data Lab liveness"),
    Entry("/auth/{call}", ("GET",),
          lambda s, c: Call("GET", "/auth/login", params={"username": "alice"},
                            headers={"X-DL-Password": "not-her-password"}),
          sub="login", public="the login itself: takes a password (wrong here), throttled"),
    Entry("/auth/{call}", ("GET",), dl("/auth", "isValidToken", token="alice.1.1.$1$forged"),
          sub="isValidToken", public="answers about the token the caller presents"),
    Entry("/auth/{call}", ("GET",), dl("/auth", "isTokenLoggedIn", token="alice.1.1.$1$forged"),
          sub="isTokenLoggedIn", public="answers about the token the caller presents"),
    Entry("/auth/{call}", ("GET",), dl("/auth", "hasAccess", user="alice.1.1.$1$forged"),
          sub="hasAccess", public="answers whether the token the caller presents is valid"),
    Entry("/query/{call}", ("GET",), dl("/query", "profiles"), sub="profiles",
          public="the service's one profile"),
    Entry("/query/{call}", ("GET",), dl("/query", "schema", value="gaia"), sub="schema",
          public="the served catalogs' schemas (no MyDB table)"),
    Entry("/query/{call}", ("GET",), dl("/query", "flush"), sub="flush", public="a no-op"),
    Entry("/query/{call}", ("GET",), dl("/query", "services"), sub="services",
          public="the service's endpoints"),
    Entry("/storage/{call}", ("GET",), dl("/storage", "profiles"), sub="profiles",
          public="the service's one profile"),

    # ---- asynchronous TAP jobs: only their owner reaches them -------------------------
    Entry("/tap/async", ("GET",), get("/tap/async"), touches=("jobs",),
          modes={ANON: OWN, BOB: OWN, XSITE: OWN},
          owner=status_is(200, contains=lambda s: s.ctx.job_pending)),
    Entry("/api/jobs", ("GET",), get("/api/jobs"), touches=("jobs",),
          modes={ANON: OWN, BOB: OWN, XSITE: OWN},
          owner=status_is(200, contains=lambda s: s.ctx.job_pending)),
    Entry("/tap/async", ("POST",),
          lambda s, c: Call("POST", "/tap/async", data={
              "LANG": "ADQL", "QUERY": "SELECT TOP 1 source_id FROM gaia"}),
          touches=("jobs",), scope="jobs:run", modes={ANON: OWN, BOB: OWN, XSITE: OWN},
          owner=uws_redirect, owner_mutates=True),
    Entry("/soda/async", ("GET",), get("/soda/async"), touches=("jobs",),
          modes={ANON: OWN, BOB: OWN, XSITE: OWN},
          owner=status_is(200, contains=lambda s: s.ctx.job_pending)),
    # The audit's store has no images: the owner's request passes the checks of who may
    # run jobs and stops at the dataset lookup.
    Entry("/soda/async", ("POST",),
          lambda s, c: Call("POST", "/soda/async", data={"ID": "ivo://meridian/images/none?x"}),
          touches=("jobs",), scope="jobs:run", modes={ANON: OWN, BOB: OWN, XSITE: OWN},
          owner=status_is(404, contains="no image dataset")),
    Entry("/tap/async/{id}", ("GET",), job_get("job_pending"), touches=("jobs",),
          owner=status_is(200, contains=JOB_MARK)),
    Entry("/tap/async/{id}", ("POST",), job_post("job_pending", "", {"ACTION": "DELETE"}),
          variant="ACTION=DELETE", touches=("jobs",), scope="jobs:run",
          owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}", ("POST",), job_post("job_pending", "", {"PHASE": "ABORT"}),
          variant="PHASE=ABORT", touches=("jobs",), scope="jobs:run",
          owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}", ("POST",),
          job_post("job_pending", "", {"QUERY": "SELECT TOP 1 ra FROM gaia"}),
          variant="new QUERY", touches=("jobs",), scope="jobs:run",
          owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}", ("DELETE",),
          lambda s, c: Call("DELETE", job_path("job_pending")(s, c)),
          touches=("jobs",), scope="jobs:run", owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}/phase", ("GET",), job_get("job_pending", "/phase"), touches=("jobs",),
          owner=status_is(200, contains="PENDING")),
    Entry("/tap/async/{id}/phase", ("POST",), job_post("job_pending", "/phase", {"PHASE": "ABORT"}),
          variant="PHASE=ABORT", touches=("jobs",), scope="jobs:run",
          owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}/phase", ("POST",), job_post("job_pending", "/phase", {"PHASE": "RUN"}),
          variant="PHASE=RUN", touches=("jobs",), scope="jobs:run",
          owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}/executionduration", ("GET",),
          job_get("job_pending", "/executionduration"), touches=("jobs",), owner=ok),
    Entry("/tap/async/{id}/executionduration", ("POST",),
          job_post("job_pending", "/executionduration", {"EXECUTIONDURATION": "7"}),
          touches=("jobs",), scope="jobs:run", owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}/destruction", ("GET",), job_get("job_pending", "/destruction"),
          touches=("jobs",), owner=ok),
    Entry("/tap/async/{id}/destruction", ("POST",),
          job_post("job_pending", "/destruction", lambda: {"DESTRUCTION": later_iso()}),
          touches=("jobs",), scope="jobs:run", owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}/quote", ("GET",), job_get("job_pending", "/quote"), touches=("jobs",),
          owner=ok),
    Entry("/tap/async/{id}/owner", ("GET",), job_get("job_pending", "/owner"), touches=("jobs",),
          owner=status_is(200, contains="alice")),
    Entry("/tap/async/{id}/error", ("GET",), job_get("job_err", "/error"), touches=("jobs",),
          owner=status_is(200, contains="no_such_table_qx")),
    Entry("/tap/async/{id}/parameters", ("GET",), job_get("job_pending", "/parameters"),
          touches=("jobs",), owner=status_is(200, contains=JOB_MARK)),
    Entry("/tap/async/{id}/parameters", ("POST",),
          job_post("job_pending", "/parameters", {"QUERY": "SELECT TOP 1 ra FROM gaia"}),
          touches=("jobs",), scope="jobs:run", owner=uws_redirect, owner_mutates=True),
    Entry("/tap/async/{id}/results", ("GET",), job_get("job_done", "/results"), touches=("jobs",),
          owner=status_is(200, contains="results/result")),
    Entry("/tap/async/{id}/results/{name}", ("GET",), job_get("job_done", "/results/result"),
          touches=("jobs",), owner=status_is(200, contains=JOB_MARK)),
    Entry("/tap/async/{id}/results/{name}/window", ("GET",),
          job_get("job_done", "/results/result/window"), touches=("jobs",),
          owner=status_is(200)),
    Entry("/tap/async/{id}/results/{name}/as", ("GET",),
          lambda s, c: Call("GET", f"/tap/async/{s.ctx.job_done}/results/result/as",
                            params={"RESPONSEFORMAT": "csv"}),
          touches=("jobs",), owner=status_is(200, contains=JOB_MARK)),
    Entry("/tap/async/{id}/results/{name}/stats", ("GET",),
          lambda s, c: Call("GET", f"/tap/async/{s.ctx.job_done}/results/result/stats",
                            params={"COLUMN": JOB_MARK}),
          touches=("jobs",), owner=status_is(200)),

    # ---- synchronous TAP on MyDB and group tables -------------------------------------
    Entry("/tap/sync", ("GET",),
          get("/tap/sync", LANG="ADQL", FORMAT="csv", QUERY=f"SELECT * FROM mydb.{TABLE}"),
          variant="alice's MyDB table", touches=("table",), refuse=(400,),
          owner=status_is(200, contains=COL_MARK)),
    Entry("/tap/sync", ("POST",),
          lambda s, c: Call("POST", "/tap/sync", data={
              "LANG": "ADQL", "FORMAT": "csv", "QUERY": f"SELECT * FROM {GROUP}.{GTABLE}"}),
          variant="alice's group table", touches=("table",), refuse=(400,),
          owner=status_is(200, contains=COL_MARK)),

    # ---- accounts ---------------------------------------------------------------------
    Entry("/api/auth/logout", ("POST",), lambda s, c: Call("POST", "/api/auth/logout"),
          touches=("account",), fresh=True, modes={BOB: OWN, SCOPED: OWN},
          owner=ok, owner_mutates=True),
    Entry("/api/auth/whoami", ("GET",), get("/api/auth/whoami"), touches=("account",),
          modes={BOB: OWN, SCOPED: OWN}, owner=status_is(200, contains="alice")),
    Entry("/oauth/userinfo", ("GET",), get("/oauth/userinfo"), touches=("account",),
          modes={BOB: OWN, SCOPED: OWN}, owner=status_is(200, contains="alice")),
    Entry("/auth/{call}", ("GET",), dl("/auth", "logout"), sub="logout", touches=("account",),
          fresh=True, modes={ANON: OWN, BOB: OWN, SCOPED: OWN, EXPIRED: OWN, XSITE: OWN}),
    Entry("/auth/{call}", ("GET",), dl("/auth", "isValidUser", user="alice"), sub="isValidUser",
          touches=("account",), modes={ANON: DENY, BOB: OWN, SCOPED: OWN, EXPIRED: DENY, XSITE: DENY},
          deny=lambda b: b == "False", owner=status_is(200, contains="True")),
    Entry("/auth/{call}", ("GET",),
          dl("/auth", "isValidPassword", user="alice", password="not-her-password"),
          sub="isValidPassword", touches=("account",),
          modes={c: DENY for c in ATTACKERS}, deny=lambda b: b == "False", refuse=(429,)),
    Entry("/auth/{call}", ("GET",), dl("/auth", "isUserLoggedIn", user="alice"),
          sub="isUserLoggedIn", touches=("account",),
          modes={ANON: DENY, BOB: DENY, SCOPED: OWN, EXPIRED: DENY, XSITE: DENY},
          deny=lambda b: b == "False", owner=status_is(200, contains="True")),
    Entry("/auth/{call}", ("GET",),
          lambda s, c: Call("GET", "/auth/passwordReset", params={"username": "alice"},
                            headers={"X-DL-Password": "taken-over-password"}),
          sub="passwordReset", variant="username=alice", touches=("account",), scope="admin"),
    Entry("/auth/{call}", ("GET",),
          lambda s, c: Call("GET", "/auth/passwordReset",
                            headers={"X-DL-Password": "taken-over-password"}),
          sub="passwordReset", variant="own, without the old password", touches=("account",),
          scope="the current password"),

    # ---- Data Lab storage calls -------------------------------------------------------
    Entry("/storage/{call}", ("GET",), dl("/storage", "isdir", name=f"alice://{DIR}"),
          sub="isdir", touches=("files",), owner=status_is(200, contains="True")),
    Entry("/storage/{call}", ("GET",), dl("/storage", "ls", name=f"alice://{DIR}"), sub="ls",
          touches=("files",), modes={ANON: DENY, BOB: DENY, XSITE: DENY},
          deny=lambda b: b.strip() == "", owner=status_is(200, contains=FILE)),
    Entry("/storage/{call}", ("GET",), dl("/storage", "ls", name=f"alice://{DIR}", format="long"),
          sub="ls", variant="format=long", touches=("files",),
          owner=status_is(200, contains=FILE)),
    Entry("/storage/{call}", ("GET",), dl("/storage", "stat", name=ALICE_FILE), sub="stat",
          touches=("files",), owner=status_is(200, contains=f'"size":{len(FILE_BYTES)}')),
    Entry("/storage/{call}", ("GET",), dl("/storage", "access", name=ALICE_FILE, mode="r"),
          sub="access", variant="mode=r", touches=("files",),
          modes={ANON: DENY, BOB: DENY, XSITE: DENY}, deny=lambda b: b == "false",
          owner=status_is(200, contains="true")),
    Entry("/storage/{call}", ("GET",), dl("/storage", "access", name=ALICE_FILE, mode="w"),
          sub="access", variant="mode=w", touches=("files",),
          modes={ANON: DENY, BOB: DENY, XSITE: DENY}, deny=lambda b: b == "false",
          owner=status_is(200, contains="true")),
    Entry("/storage/{call}", ("GET",), dl("/storage", "get", name=ALICE_FILE), sub="get",
          touches=("files",), follow=True, owner=status_is(200, check=ticket_gives_file)),
    Entry("/storage/{call}", ("GET",), dl("/storage", "put", name=ALICE_FILE), sub="put",
          touches=("files",), scope="storage:write", follow=True,
          owner=status_is(200, contains="/storage/xfer/")),
    Entry("/storage/{call}", ("GET",), dl("/storage", "mkdir", dir=f"alice://{DIR}/newdirqx"),
          sub="mkdir", touches=("files",), scope="storage:write",
          owner=status_is(201), owner_mutates=True),
    Entry("/storage/{call}", ("GET",), dl("/storage", "rmdir", dir=f"alice://{EMPTY}"),
          sub="rmdir", touches=("files",), scope="storage:write",
          owner=status_is(204), owner_mutates=True),
    Entry("/storage/{call}", ("GET",), dl("/storage", "rm", file=ALICE_FILE), sub="rm",
          touches=("files",), scope="storage:write", owner=status_is(204), owner_mutates=True),
    Entry("/storage/{call}", ("GET",),
          dl("/storage", "mv", **{"from": ALICE_FILE, "to": lambda s, c: elsewhere(s, c, "mvqx.txt")}),
          sub="mv", touches=("files",), scope="storage:write",
          owner=status_is(200, contains="COMPLETED"), owner_mutates=True),
    Entry("/storage/{call}", ("GET",),
          dl("/storage", "cp", **{"from": ALICE_FILE, "to": lambda s, c: elsewhere(s, c, "cpqx.txt")}),
          sub="cp", touches=("files",), scope="storage:write",
          owner=status_is(200, contains="COMPLETED"), owner_mutates=True),
    Entry("/storage/{call}", ("GET",),
          dl("/storage", "ln", **{"from": f"alice://{DIR}/lnqx", "to": ALICE_FILE}),
          sub="ln", touches=("files",), scope="storage:write",
          owner=status_is(201), owner_mutates=True),
    Entry("/storage/{call}", ("GET",), dl("/storage", "tag", name=ALICE_FILE, tag="pwned"),
          sub="tag", touches=("files",), scope="storage:write",
          owner=status_is(200), owner_mutates=True),
    Entry("/storage/{call}", ("GET",),
          dl("/storage", "load", name=f"alice://{DIR}/loadqx", endpoint="http://127.0.0.1:9/x"),
          sub="load", touches=("files",), scope="storage:write", refuse=(400,),
          # Loopback URLs are never fetched: the call stops there, for alice too (400).
          owner=status_is(400, contains="may not read")),

    # ---- Data Lab query calls ---------------------------------------------------------
    Entry("/query/{call}", ("GET",), dl("/query", "query", sql=f"SELECT * FROM mydb.{TABLE}"),
          sub="query", variant="read alice's table", touches=("table",), refuse=(400,),
          owner=status_is(200, contains=COL_MARK)),
    Entry("/query/{call}", ("POST",),
          lambda s, c: Call("POST", "/query/query", params={"sql": f"SELECT * FROM {GROUP}.{GTABLE}"}),
          sub="query", variant="read alice's group table", touches=("table",), refuse=(400,),
          owner=status_is(200, contains=COL_MARK)),
    Entry("/query/{call}", ("GET",),
          dl("/query", "query", sql="SELECT source_id FROM gaia WHERE dec > 89",
             out=f"mydb://{TABLE}", drop="True"),
          sub="query", variant="out=mydb:// replaces a table", touches=("table",),
          scope="storage:write", modes={BOB: OWN}, owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "query", sql="SELECT source_id FROM gaia WHERE dec > 89",
             out=f"mydb://{GROUP}.{GTABLE}", drop="True"),
          sub="query", variant="out=mydb:// into alice's group", touches=("table",),
          scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "query", sql="SELECT source_id FROM gaia LIMIT 1", out=ALICE_FILE),
          sub="query", variant="out= alice's file", touches=("files",), scope="storage:write",
          owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "query", sql="SELECT source_id FROM gaia LIMIT 1", **{"async": "True"}),
          sub="query", variant="async=True", touches=("jobs",), scope="jobs:run",
          modes={ANON: OWN, BOB: OWN, XSITE: OWN}, owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",), dl("/query", "status", jobid=lambda s, c: s.ctx.job_pending),
          sub="status", touches=("jobs",), owner=status_is(200, contains="PENDING")),
    Entry("/query/{call}", ("GET",), dl("/query", "results", jobid=lambda s, c: s.ctx.job_done),
          sub="results", touches=("jobs",), owner=status_is(200, contains=JOB_MARK)),
    Entry("/query/{call}", ("GET",), dl("/query", "error", jobid=lambda s, c: s.ctx.job_err),
          sub="error", touches=("jobs",), owner=status_is(200, contains="no_such_table_qx")),
    Entry("/query/{call}", ("GET",), dl("/query", "abort", jobid=lambda s, c: s.ctx.job_pending),
          sub="abort", touches=("jobs",), scope="jobs:run", owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",), dl("/query", "list"), sub="list", touches=("table",),
          modes={BOB: OWN}, owner=status_is(200, contains=TABLE)),
    Entry("/query/{call}", ("GET",), dl("/query", "list", table=TABLE), sub="list",
          variant="table=", touches=("table",), modes={BOB: OWN},
          owner=status_is(200, contains=COL_MARK)),
    Entry("/query/{call}", ("GET",), dl("/query", "rename", source=TABLE, target="renamedqx"),
          sub="rename", touches=("table",), scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "rename", source=f"{GROUP}.{GTABLE}", target="renamedqx"),
          sub="rename", variant="group table", touches=("table",), scope="storage:write",
          refuse=(400,)),
    Entry("/query/{call}", ("GET",), dl("/query", "copy", source=TABLE, target="copiedqx"),
          sub="copy", touches=("table",), scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",), dl("/query", "truncate", table=TABLE), sub="truncate",
          touches=("table",), scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "import", table="importedqx", filename=ALICE_FILE), sub="import",
          variant="from alice's file", touches=("table", "files"), scope="storage:write",
          owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "ingest", table="ingestedqx", filename=ALICE_FILE), sub="ingest",
          variant="from alice's file", touches=("table", "files"), scope="storage:write",
          owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "create", table="createdqx", schema="a,integer"), sub="create",
          touches=("table",), scope="storage:write", modes={BOB: OWN}, owner=ok,
          owner_mutates=True),
    Entry("/query/{call}", ("GET",),
          dl("/query", "create", table=TABLE, schema="a,integer", drop="True"), sub="create",
          variant="drop=True over alice's table", touches=("table",), scope="storage:write",
          modes={BOB: OWN}, owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("GET",), dl("/query", "index", tbl=TABLE), sub="index",
          touches=("table",), scope="storage:write", owner=ok),
    Entry("/query/{call}", ("GET",), dl("/query", "delete", table=TABLE), sub="delete",
          touches=("table",), scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/query/{call}", ("POST",),
          lambda s, c: Call("POST", "/query/delete", params={"table": TABLE}), sub="delete",
          variant="POST", touches=("table",), scope="storage:write", owner=ok,
          owner_mutates=True),
    Entry("/query/{call}", ("GET",), dl("/query", "delete", table=f"{GROUP}.{GTABLE}"),
          sub="delete", variant="group table", touches=("table",), scope="storage:write",
          refuse=(400,)),

    # ---- Data Lab staged uploads and transfer URLs ------------------------------------
    Entry("/storage/xfer", ("POST",),
          lambda s, c: Call("POST", "/storage/xfer", data=b"a,b\n1,2\n",
                            headers={"X-DL-FileName": "stagedqx.csv", "X-DL-InitXfer": "True"}),
          touches=("table",), scope="storage:write", modes={BOB: OWN}, owner=ok,
          owner_mutates=True),
    Entry("/storage/xfer/{ticket}", ("GET",),
          lambda s, c: Call("GET", f"/storage/xfer/{xfer_ticket('put')(s, c)}"),
          variant="an upload URL read", touches=("files",)),
    Entry("/storage/xfer/{ticket}", ("GET",),
          lambda s, c: Call("GET", f"/storage/xfer/{uuid.uuid4().hex}"),
          variant="a guessed URL", touches=("files",)),
    Entry("/storage/xfer/{ticket}", ("PUT",),
          lambda s, c: Call("PUT", f"/storage/xfer/{xfer_ticket('get')(s, c)}", data=b"pwned"),
          variant="a download URL written", touches=("files",)),
    Entry("/storage/xfer/{ticket}", ("PUT",),
          lambda s, c: Call("PUT", f"/storage/xfer/{uuid.uuid4().hex}", data=b"pwned"),
          variant="a guessed URL", touches=("files",)),

    # ---- groups -----------------------------------------------------------------------
    Entry("/api/groups", ("GET",), get("/api/groups"), touches=("group",), modes={BOB: OWN},
          owner=status_is(200, contains=GROUP)),
    Entry("/api/groups", ("POST",), lambda s, c: Call("POST", "/api/groups", data={"name": GROUP}),
          variant="alice's group's name", touches=("group",), scope="storage:write",
          refuse=(409,)),
    Entry("/api/groups", ("POST",),
          lambda s, c: Call("POST", "/api/groups", data={"name": "newgrpqx"}),
          variant="a new group", touches=("group",), scope="storage:write", modes={BOB: OWN},
          owner=status_is(201), owner_mutates=True),
    Entry("/api/groups/{name}", ("GET",), get(f"/api/groups/{GROUP}"), touches=("group",),
          owner=status_is(200, contains="carol")),
    Entry("/api/groups/{name}", ("DELETE",), lambda s, c: Call("DELETE", f"/api/groups/{GROUP}"),
          touches=("group", "table"), scope="storage:write", owner=status_is(204),
          owner_mutates=True),
    Entry("/api/groups/{name}/members", ("POST",),
          lambda s, c: Call("POST", f"/api/groups/{GROUP}/members", data={"user": "bob", "role": "admin"}),
          variant="invite bob as admin", touches=("group",), scope="storage:write",
          owner=ok, owner_mutates=True),
    Entry("/api/groups/{name}/members", ("POST",),
          lambda s, c: Call("POST", f"/api/groups/{GROUP}/members", data={"user": "carol", "role": "admin"}),
          variant="make carol admin", touches=("group",), scope="storage:write",
          owner=ok, owner_mutates=True),
    Entry("/api/groups/{name}/members", ("POST",),
          lambda s, c: Call("POST", f"/api/groups/{GROUP}/members", data={"action": "accept"}),
          variant="accept without an invitation", touches=("group",), scope="storage:write"),
    Entry("/api/groups/{name}/members/{user}", ("DELETE",),
          lambda s, c: Call("DELETE", f"/api/groups/{GROUP}/members/carol"),
          variant="remove carol", touches=("group",), scope="storage:write",
          owner=status_is(204), owner_mutates=True),
    Entry("/api/groups/{name}/members/{user}", ("DELETE",),
          lambda s, c: Call("DELETE", f"/api/groups/{GROUP}/members/alice"),
          variant="remove the owner", touches=("group",), scope="storage:write", refuse=(400, 409)),

    # ---- alert filters ------------------------------------------------------------------
    Entry("/api/alerts/filters", ("GET",), get("/api/alerts/filters"), touches=("filter",),
          modes={BOB: OWN}, owner=status_is(200, contains=FILTER_MARK)),
    Entry("/api/alerts/filters", ("POST",),
          lambda s, c: Call("POST", "/api/alerts/filters", data={
              "name": "newfilterqx", "mydb_table": "filteroutqx",
              "query": "SELECT a.alertId FROM alert.diasource AS a"}),
          variant="a new filter", touches=("filter", "table"),
          scope="storage:write", modes={BOB: OWN}, owner=status_is(201), owner_mutates=True),
    Entry("/api/alerts/filters/{id}", ("GET",), filter_get(""), touches=("filter",),
          owner=status_is(200, contains=FILTER_MARK)),
    Entry("/api/alerts/filters/{id}", ("DELETE",),
          lambda s, c: Call("DELETE", f"/api/alerts/filters/{s.ctx.filter_id}"),
          touches=("filter",), scope="storage:write", owner=status_is(204), owner_mutates=True),
    Entry("/api/alerts/filters/{id}/pause", ("POST",),
          lambda s, c: Call("POST", f"/api/alerts/filters/{s.ctx.filter_id}/pause"),
          touches=("filter",), scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/api/alerts/filters/{id}/resume", ("POST",),
          lambda s, c: Call("POST", f"/api/alerts/filters/{s.ctx.filter_id}/resume"),
          touches=("filter",), scope="storage:write", owner=ok, owner_mutates=True),
    Entry("/api/alerts/filters/{id}/matches", ("GET",), filter_get("/matches"),
          touches=("filter",), owner=ok),
    Entry("/api/alerts/filters/{id}/events", ("GET",), filter_get("/events", after="0", follow="false"),
          touches=("filter",), owner=ok),

    # ---- VOSpace ----------------------------------------------------------------------
    Entry("/vospace/nodes/{*path}", ("GET",), get(f"/vospace/nodes/alice/{DIR}"),
          touches=("files",), owner=status_is(200, contains=FILE)),
    Entry("/vospace/nodes/{*path}", ("PUT",),
          lambda s, c: Call("PUT", f"/vospace/nodes/alice/{DIR}/newnodeqx",
                            data=node_doc("ContainerNode", f"alice/{DIR}/newnodeqx"), headers=XML),
          touches=("files",), scope="storage:write", owner=status_is(201), owner_mutates=True),
    Entry("/vospace/nodes/{*path}", ("POST",),
          lambda s, c: Call("POST", f"/vospace/nodes/alice/{DIR}/{FILE}",
                            data=node_doc("DataNode", f"alice/{DIR}/{FILE}",
                                          [(f"{CORE}#ispublic", "true")]), headers=XML),
          variant="make public", touches=("files",), scope="storage:write", owner=ok,
          owner_mutates=True),
    Entry("/vospace/nodes/{*path}", ("DELETE",),
          lambda s, c: Call("DELETE", f"/vospace/nodes/alice/{DIR}"),
          touches=("files",), scope="storage:write", owner=status_is(204), owner_mutates=True),
    Entry("/vospace/files/{*path}", ("GET",), get(f"/vospace/files/alice/{DIR}/{FILE}"),
          touches=("files",), owner=status_is(200, check=content_is_file)),
    Entry("/vospace/synctrans", ("POST",),
          lambda s, c: Call("POST", "/vospace/synctrans", headers=XML,
                            data=transfer_doc(FILE_URI, "pullFromVoSpace", f"{CORE}#httpget")),
          variant="pullFromVoSpace", touches=("files",), owner=status_is(303)),
    Entry("/vospace/synctrans", ("POST",),
          lambda s, c: Call("POST", "/vospace/synctrans", data={
              "TARGET": FILE_URI, "DIRECTION": "pullFromVoSpace",
              "PROTOCOL": f"{CORE}#httpget", "REQUEST": "redirect"}),
          variant="pullFromVoSpace, REQUEST=redirect", touches=("files",), owner=status_is(303)),
    Entry("/vospace/synctrans", ("POST",),
          lambda s, c: Call("POST", "/vospace/synctrans", headers=XML,
                            data=transfer_doc(FILE_URI, "pushToVoSpace", f"{CORE}#httpput")),
          variant="pushToVoSpace", touches=("files",), scope="storage:write",
          owner=status_is(303)),
    Entry("/vospace/synctrans", ("GET",),
          lambda s, c: Call("GET", "/vospace/synctrans", params={
              "TARGET": FILE_URI, "DIRECTION": "pullFromVoSpace", "PROTOCOL": f"{CORE}#httpget"}),
          variant="pullFromVoSpace", touches=("files",), owner=status_is(303)),
    Entry("/vospace/synctrans/{id}", ("GET",), get("/vospace/synctrans/{c.sync_id}"),
          touches=("transfer",), owner=status_is(200, contains="/storage/xfer/")),
    Entry("/vospace/transfers", ("POST",),
          lambda s, c: Call("POST", "/vospace/transfers", params={"PHASE": "RUN"}, headers=XML,
                            data=transfer_doc(FILE_URI, f"{VROOT}/bob/stolenqx", keep=True)),
          variant="copy alice's file out", touches=("files",), scope="storage:write",
          modes={BOB: OWN}),
    Entry("/vospace/transfers", ("POST",),
          lambda s, c: Call("POST", "/vospace/transfers", params={"PHASE": "RUN"}, headers=XML,
                            data=transfer_doc(FILE_URI, f"{VROOT}/alice/{DIR}/movedqx")),
          variant="move alice's file", touches=("files",), scope="storage:write",
          modes={BOB: OWN}, owner=status_is(303), owner_mutates=True),
    Entry("/vospace/transfers/{id}", ("GET",), get("/vospace/transfers/{c.transfer_id}"),
          touches=("transfer",), owner=status_is(200, contains=DEST_MARK)),
    Entry("/vospace/transfers/{id}/phase", ("GET",),
          get("/vospace/transfers/{c.transfer_id}/phase"), touches=("transfer",),
          owner=status_is(200, contains="PENDING")),
    Entry("/vospace/transfers/{id}/phase", ("POST",),
          lambda s, c: Call("POST", f"/vospace/transfers/{s.ctx.transfer_id}/phase",
                            data={"PHASE": "RUN"}),
          variant="PHASE=RUN", touches=("transfer", "files"), scope="storage:write",
          owner=status_is(303), owner_mutates=True),
    Entry("/vospace/transfers/{id}/phase", ("POST",),
          lambda s, c: Call("POST", f"/vospace/transfers/{s.ctx.transfer_id}/phase",
                            data={"PHASE": "ABORT"}),
          variant="PHASE=ABORT", touches=("transfer",), scope="storage:write",
          owner=status_is(303), owner_mutates=True),
    Entry("/vospace/transfers/{id}/error", ("GET",),
          get("/vospace/transfers/{c.transfer_id}/error"), touches=("transfer",), owner=ok),
    Entry("/vospace/transfers/{id}/results/transferDetails", ("GET",),
          get("/vospace/transfers/{c.sync_id}/results/transferDetails"), touches=("transfer",),
          owner=status_is(200, contains="/storage/xfer/")),
]

# SPARCL's API (crates/server/src/spectra/sparcl.rs, `routes`): each call with and without
# its trailing slash. Published spectra for everybody; private datasets for their readers.
SPARCL_CALLS = {
    "announcement": ("GET", None, "a service announcement"),
    "version": ("GET", None, "the API version"),
    "datafields": ("GET", None, "the fields of every dataset"),
    "auth_status": ("GET", None, "who the caller is and which datasets they may read"),
    "get_token": ("POST", b'{"email": "nobody", "password": "x"}', "login: a token for the caller's own account"),
    "renew_token": ("POST", b'{"refresh_token": "x"}', "a new token for the caller's own refresh token"),
    "find": ("POST", b'{"outfields": ["sparcl_id"], "search": []}', "core fields of the spectra the caller may read"),
    "spectras": ("POST", b'["00000000-0000-8000-8000-000000000000"]', "spectra the caller may read"),
    "missing": ("POST", b'["00000000-0000-8000-8000-000000000000"]', "which ids the caller's datasets lack"),
    "missing_specids": ("POST", b'[1]', "which specids the caller's datasets lack"),
}
for _name, (_method, _body, _why) in SPARCL_CALLS.items():
    for _path in (f"/sparcl/api/{_name}", f"/sparcl/api/{_name}/"):
        ROUTES.append(Entry(_path, (_method,),
                            (lambda p, m, b: lambda s, c: Call(m, p, data=b))(_path, _method, _body),
                            public=_why))


PRIVATE = [e for e in ROUTES if e.public is None]
PUBLIC = [e for e in ROUTES if e.public is not None]

# --------------------------------------------------------------------------------------
# The table covers the sources.

def _balanced(text, start):
    """The text from `start` (just after an opening parenthesis) to its closing one."""
    depth, i = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def routes_in_source():
    src = (SRC / "lib.rs").read_text()
    body = src[src.index("pub fn router("):]
    body = body[:body.index("\n}\n")]
    found = set()
    for m in re.finditer(r"\.route\(", body):
        arg = _balanced(body, m.end())
        path = re.match(r'\s*"([^"]+)"', arg).group(1)
        methods = re.findall(r"\b(get|post|put|delete|patch|head|options|any)\(", arg)
        assert methods, f"no method found for route {path}"
        found |= {(path, meth.upper()) for meth in methods}
    # SPARCL's calls are listed in a table in sparcl.rs (codes below 10 are GETs).
    src = (SRC / "spectra" / "sparcl.rs").read_text()
    body = src[src.index("pub fn routes()"):]
    body = body[:body.index("\n}\n")]
    for name, code in re.findall(r'\("([a-z_]+)", (\d+)\)', body):
        method = "GET" if int(code) < 10 else "POST"
        found |= {(f"/sparcl/api/{name}", method), (f"/sparcl/api/{name}/", method)}
    return found


def subcalls_in_source(file, function):
    """The string patterns of the outermost match arms in `function` of `file`."""
    src = (SRC / file).read_text()
    start = src.index(f"pub async fn {function}(")
    body = src[start:src.index("\n}\n", start)]
    arms = re.findall(r'^( *)("[^"\n]+"(?:\s*\|\s*"[^"\n]+")*)\s*(?:if [^=]*)?=>', body, re.M)
    assert arms, f"no match arms found in {file} {function}"
    outer = min(len(indent) for indent, _ in arms)
    return {name for indent, pats in arms if len(indent) == outer
            for name in re.findall(r'"([^"]+)"', pats)}


def test_every_route_of_the_router_has_an_audit_entry():
    in_source = routes_in_source()
    assert len(in_source) > 50  # the parser found the router
    audited = {(e.route, m) for e in ROUTES for m in e.methods}
    missing = sorted(in_source - audited)
    assert not missing, f"routes without an audit entry in ROUTES: {missing}"
    stale = sorted(audited - in_source)
    assert not stale, f"audit entries for routes that lib.rs does not have: {stale}"


@pytest.mark.parametrize("route,file,function", [
    ("/storage/{call}", "storage.rs", "call"),
    ("/query/{call}", "datalab.rs", "call"),
    ("/auth/{call}", "auth.rs", "dl_call"),
])
def test_every_data_lab_call_has_an_audit_entry(route, file, function):
    in_source = subcalls_in_source(file, function)
    assert len(in_source) >= 9
    audited = {e.sub for e in ROUTES if e.route == route}
    missing = sorted(in_source - audited)
    assert not missing, f"{route} calls without an audit entry: {missing}"
    stale = sorted(audited - in_source)
    assert not stale, f"audit entries for {route} calls that {file} does not have: {stale}"


def test_every_private_entry_says_what_it_reaches():
    for e in PRIVATE:
        assert e.touches, f"{e.label}: no data named"
    for e in PUBLIC:
        assert e.public.strip(), e.label


# --------------------------------------------------------------------------------------
# The service, alice's data, and how it is compared and put back.

class NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Nothing a response sets is sent again: every caller's credentials are explicit."""

    def set_ok(self, cookie, request):
        return False


def session(ip=None, token=None):
    s = client(ip) if ip else requests.Session()
    s.cookies.set_policy(NoCookies())
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
        s.headers["X-DL-AuthToken"] = token
    return s


def issue(svc, user, scopes=None, expires=None):
    args = ["user", "token", user]
    if scopes:
        args += ["--scopes", scopes]
    if expires:
        args += ["--expires", expires]
    return run(*args, data_dir=svc.store, env=svc.env).stdout.strip()


def whoami(svc, token):
    r = requests.get(f"{svc.base}/api/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.text


def location_id(r, back=1):
    assert r.status_code == 303, f"{r.status_code}: {r.text[:300]}"
    return r.headers["Location"].rstrip("/").split("/")[-back]


def make_files(svc):
    A, b = svc.A, svc.base
    for d in (DIR, EMPTY):
        r = A.get(f"{b}/storage/mkdir", params={"dir": f"vos://{d}"})
        assert r.status_code == 201, r.text
    r = A.get(f"{b}/storage/put", params={"name": f"vos://{DIR}/{FILE}"})
    assert r.status_code == 200, r.text
    assert requests.put(r.text.strip(), data=FILE_BYTES).status_code == 201


def make_table(svc):
    r = svc.A.get(f"{svc.base}/query/query", params={
        "sql": f"SELECT source_id AS {COL_MARK} FROM gaia WHERE dec > 85",
        "out": f"mydb://{TABLE}", "drop": "True"})
    assert r.status_code == 200, r.text


def make_group_table(svc):
    r = svc.A.get(f"{svc.base}/query/query", params={
        "sql": f"SELECT source_id AS {COL_MARK} FROM gaia WHERE dec > 86",
        "out": f"mydb://{GROUP}.{GTABLE}", "drop": "True"})
    assert r.status_code == 200, r.text


def make_group(svc):
    A, b = svc.A, svc.base
    r = A.post(f"{b}/api/groups", data={"name": GROUP})
    assert r.status_code == 201, r.text
    r = A.post(f"{b}/api/groups/{GROUP}/members", data={"user": "carol", "role": "ro"})
    assert r.status_code == 200, r.text
    r = svc.carol.post(f"{b}/api/groups/{GROUP}/members", data={"action": "accept"})
    assert r.status_code == 200, r.text
    make_group_table(svc)


def make_filter(svc):
    r = svc.A.post(f"{svc.base}/api/alerts/filters", data={
        "name": FILTER,
        "query": f"SELECT a.alertId, a.psfFlux AS {FILTER_MARK} FROM alert.diasource AS a"})
    assert r.status_code == 201, r.text
    svc.ctx.filter_id = str(r.json()["id"])


def make_jobs(svc):
    A, b, c = svc.A, svc.base, svc.ctx
    c.job_pending = location_id(A.post(f"{b}/tap/async", allow_redirects=False, data={
        "LANG": "ADQL", "QUERY": f"SELECT TOP 2 source_id AS {JOB_MARK} FROM gaia"}))
    c.job_done = location_id(A.post(f"{b}/tap/async", allow_redirects=False, data={
        "LANG": "ADQL", "PHASE": "RUN", "FORMAT": "csv",
        "QUERY": f"SELECT TOP 2 source_id AS {JOB_MARK} FROM gaia"}))
    c.job_err = location_id(A.post(f"{b}/tap/async", allow_redirects=False, data={
        "LANG": "ADQL", "PHASE": "RUN", "QUERY": "SELECT * FROM no_such_table_qx"}))
    for job, want in [(c.job_done, "COMPLETED"), (c.job_err, "ERROR")]:
        deadline = time.time() + 30
        while (phase := A.get(f"{b}/tap/async/{job}/phase").text) != want:
            assert phase in ("QUEUED", "EXECUTING", "PENDING") and time.time() < deadline, phase
            time.sleep(0.05)


def make_transfers(svc):
    A, b, c = svc.A, svc.base, svc.ctx
    c.transfer_id = location_id(A.post(
        f"{b}/vospace/transfers", headers=XML, allow_redirects=False,
        data=transfer_doc(FILE_URI, f"{VROOT}/alice/{DEST_MARK}", keep=True)))
    c.sync_id = location_id(A.post(
        f"{b}/vospace/synctrans", headers=XML, allow_redirects=False,
        data=transfer_doc(FILE_URI, "pullFromVoSpace", f"{CORE}#httpget")), back=3)


def children(sess, base, space):
    r = sess.get(f"{base}/vospace/nodes/{space}", params={"detail": "min"})
    if r.status_code != 200:
        return []
    return [u.split("!vospace/", 1)[1] for u in re.findall(r'<vos:node uri="([^"]+)"', r.text)]


def tree_digest(root):
    out = []
    if root.exists():
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out.append((str(p.relative_to(root)), hashlib.sha1(p.read_bytes()).hexdigest()))
    return out


def snapshot(svc, kinds):
    """What alice (her full token, from her own address) sees of her data."""
    A, b, c = svc.A, svc.base, svc.ctx
    snap = {}
    if "account" in kinds:
        snap["account"] = [whoami(svc, svc.tokens[k])[0] for k in ("alice", "alice_ro")]
    if "files" in kinds:
        content = A.get(f"{b}/vospace/files/alice/{DIR}/{FILE}")
        snap["files"] = (content.status_code, content.content,
                         A.get(f"{b}/vospace/nodes/alice", params={"detail": "max"}).text,
                         A.get(f"{b}/vospace/nodes/alice/{DIR}", params={"detail": "max"}).text)
    if "table" in kinds:
        snap["table"] = (tree_digest(svc.dir / "mydb" / "alice"),
                         tree_digest(svc.dir / "mydb" / GROUP))
    if "jobs" in kinds:
        snap["jobs"] = (A.get(f"{b}/tap/async").text, A.get(f"{b}/tap/async/{c.job_pending}").text)
    if "group" in kinds:
        snap["group"] = (A.get(f"{b}/api/groups/{GROUP}").text, A.get(f"{b}/api/groups").text)
    if "filter" in kinds:
        snap["filter"] = A.get(f"{b}/api/alerts/filters").text
    if "transfer" in kinds:
        snap["transfer"] = (A.get(f"{b}/vospace/transfers/{c.transfer_id}").text,
                            A.get(f"{b}/vospace/synctrans/{c.sync_id}").text)
    return snap


def restore(svc, kinds):
    """Puts alice's data of `kinds` back as the fixture made it."""
    A, b = svc.A, svc.base
    if "account" in kinds:
        for key, scopes in [("alice", None), ("alice_ro", READ_ONLY)]:
            if whoami(svc, svc.tokens[key])[0] != 200:
                svc.tokens[key] = issue(svc, "alice", scopes)
        svc.A = A = session(token=svc.tokens["alice"])
    if "group" in kinds:
        for name in (GROUP, "newgrpqx"):
            A.delete(f"{b}/api/groups/{name}")
        make_group(svc)
    if "files" in kinds:
        for path in children(A, b, "alice"):
            assert A.delete(f"{b}/vospace/nodes/{path}").status_code == 204
        make_files(svc)
    if "table" in kinds:
        for name in A.get(f"{b}/query/list").text.split():
            A.get(f"{b}/query/delete", params={"table": name})
        for f in (svc.dir / "mydb" / "alice" / "uploads").glob("*"):
            f.unlink()
        make_table(svc)
        make_group_table(svc)
    if "jobs" in kinds:
        for job in re.findall(r'jobref id="([^"]+)"', A.get(f"{b}/tap/async").text):
            A.delete(f"{b}/tap/async/{job}", allow_redirects=False)
        make_jobs(svc)
    if "transfer" in kinds:
        make_transfers(svc)
    if "filter" in kinds:
        r = A.get(f"{b}/api/alerts/filters")
        for f in r.json() if r.status_code == 200 else []:
            A.delete(f"{b}/api/alerts/filters/{f['id']}")
        make_filter(svc)


def bob_holdings(svc):
    """The contents of bob's files (two levels down) and the columns of his tables: where
    a copy of alice's data would land."""
    B, b = svc.bob, svc.base
    out = []
    paths = children(B, b, "bob")
    for path in paths + [p for d in paths for p in children(B, b, d)]:
        r = B.get(f"{b}/vospace/files/{path}")
        if r.status_code == 200:
            out.append(r.content.decode(errors="replace"))
    for name in B.get(f"{b}/query/list").text.split():
        out.append(B.get(f"{b}/query/list", params={"table": name}).text)
    return "\n".join(out)


def cleanup_bob(svc):
    """Empties bob's own namespace, so that every call of his names only alice's data."""
    B, b = svc.bob, svc.base
    for name in B.get(f"{b}/query/list").text.split():
        B.get(f"{b}/query/delete", params={"table": name})
    for path in children(B, b, "bob"):
        B.delete(f"{b}/vospace/nodes/{path}")
    r = B.get(f"{b}/api/groups")
    for g in r.json() if r.status_code == 200 else []:
        if g.get("role") == "owner":
            B.delete(f"{b}/api/groups/{g['name']}")


@pytest.fixture(scope="module")
def svc(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("security-authz")
    env = personal_env(d)
    add_users(store, env, "alice", "bob", "carol")
    with Server(store, env=env) as server:
        s = SimpleNamespace(base=server.url.removesuffix("/tap"), env=env, store=store, dir=d,
                            server=server, ctx=SimpleNamespace())
        expired_at = time.time() + 1
        s.tokens = {"alice_exp": issue(s, "alice", expires="1s"),
                    # for the logouts, which would revoke the first one
                    "alice_exp_spare": issue(s, "alice", expires="1s"),
                    "alice": issue(s, "alice"),
                    "alice_ro": issue(s, "alice", READ_ONLY),
                    "bob": issue(s, "bob"),
                    "carol": issue(s, "carol")}
        s.A = session(token=s.tokens["alice"])
        s.bob = session(token=s.tokens["bob"])
        s.carol = session(token=s.tokens["carol"])
        make_files(s)
        make_table(s)
        make_group(s)
        make_jobs(s)
        make_transfers(s)
        make_filter(s)
        time.sleep(max(0.0, expired_at + 1.2 - time.time()))
        yield s
        assert server.proc.poll() is None, "the server died"


def markers(svc):
    c = svc.ctx
    return [FILE_MARK, COL_MARK, JOB_MARK, DEST_MARK, FILTER_MARK, "carol", GROUP, TABLE, DIR, FILE,
            "/storage/xfer/", "alice", c.job_pending, c.job_done, c.job_err, c.transfer_id,
            c.sync_id, svc.tokens["alice"]]


def caller_headers(svc, caller, tokens):
    if caller == ANON:
        return {}
    if caller == XSITE:
        return {"Cookie": f"meridian_token={tokens['alice']}", "Sec-Fetch-Site": "cross-site"}
    token = tokens[{BOB: "bob", SCOPED: "alice_ro", EXPIRED: "alice_exp", OWNER: "alice"}[caller]]
    return {"Authorization": f"Bearer {token}", "X-DL-AuthToken": token}


def send(svc, caller, call, tokens):
    headers = {**caller_headers(svc, caller, tokens), **call.headers}
    sess = session(ADDRESS[caller])
    return sess.request(call.method, svc.base + call.path, params=call.params, data=call.data,
                        headers=headers, allow_redirects=False, timeout=60)


def request_text(r, call):
    body = r.request.body or b""
    body = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return r.request.url + " " + body + " " + repr(call.headers)


def leaked(svc, r, call, caller):
    """Marks of alice's data in the answer that the request did not itself carry."""
    sent = request_text(r, call)
    seen = r.content.decode(errors="replace") + " " + r.headers.get("Location", "")
    return [m for m in markers(svc) if m and m not in sent and m in seen]


# --------------------------------------------------------------------------------------
# The audit.

def test_the_callers_are_who_they_seem(svc):
    """Controls: the expired token has expired (it was valid: it names alice), the scoped one
    lacks the scopes, and alice's cookie works from her own pages and from programs; only a
    request a browser marks as coming from elsewhere makes it count for nothing."""
    for key in ("alice_exp", "alice_exp_spare"):
        code, text = whoami(svc, svc.tokens[key])
        assert code == 401 and "expire" in text.lower(), text
    code, text = whoami(svc, svc.tokens["alice_ro"])
    assert code == 200 and '"catalogs:read"' in text and "storage:write" not in text, text
    assert "jobs:run" not in text
    cookie = {"Cookie": f"meridian_token={svc.tokens['alice']}"}
    for extra, want in [({}, 200), ({"Sec-Fetch-Site": "same-origin"}, 200),
                        ({"Sec-Fetch-Site": "none"}, 200), ({"Origin": svc.base}, 200),
                        ({"Sec-Fetch-Site": "cross-site"}, 401),
                        ({"Sec-Fetch-Site": "same-site"}, 401),
                        ({"Origin": "https://evil.example"}, 401),
                        ({"Referer": "https://evil.example/page"}, 401)]:
        r = session().get(f"{svc.base}/api/auth/whoami", headers={**cookie, **extra})
        assert r.status_code == want, (extra, r.text)



def attack_cases():
    for e in PRIVATE:
        for caller in ATTACKERS:
            if caller == SCOPED and e.scope is None:
                continue  # a read of alice's own data: any valid token of hers may
            yield pytest.param(e, caller, id=f"{e.label} <- {caller}")


@pytest.mark.parametrize("entry,caller", list(attack_cases()))
def test_others_cannot_reach_alices_data(svc, entry, caller):
    kinds = set(entry.touches) | {"account"}
    tokens = dict(svc.tokens)
    if entry.fresh:
        tokens["bob"] = issue(svc, "bob")
        tokens["alice_ro"] = issue(svc, "alice", READ_ONLY)
        tokens["alice_exp"] = tokens["alice_exp_spare"]
    before = snapshot(svc, kinds)
    call = entry.build(svc, caller)
    r = send(svc, caller, call, tokens)
    followed = ""
    if entry.follow and 200 <= r.status_code < 300 and "/storage/xfer/" in r.text:
        url = r.text.strip()
        f = requests.put(url, data=b"pwned") if entry.sub == "put" else requests.get(url)
        followed = f"; using the URL it gave: {f.status_code} {f.content[:80]!r}"
    after = snapshot(svc, kinds)
    changed = sorted(k for k in kinds if before[k] != after[k])
    leaks = leaked(svc, r, call, caller)
    if changed:
        restore(svc, changed)
    taken = []
    if caller == BOB:
        held = bob_holdings(svc)
        taken = [m for m in (FILE_MARK, COL_MARK, JOB_MARK) if m in held]
        cleanup_bob(svc)

    what = f"{caller}: {call.method} {call.path} {call.params or ''} -> {r.status_code} {r.text[:300]!r}{followed}"
    assert r.status_code < 500, f"server error; {what}"
    assert not changed, f"alice's {changed} changed; {what}"
    assert not leaks, f"alice's data in the answer {leaks}; {what}"
    assert not taken, f"alice's data copied into bob's files or tables {taken}; {what}"
    mode = entry.mode(caller)
    refused = r.status_code in REFUSED or r.status_code in entry.refuse
    if mode == REFUSE:
        assert refused, f"not refused; {what}"
    elif mode == DENY:
        assert refused or (r.status_code == 200 and entry.deny(r.text.strip())), \
            f"not denied; {what}"


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.label) for e in PRIVATE if e.owner])
def test_alice_herself_can(svc, entry):
    """The same requests from alice's full token succeed: the refusals above are
    authorization, not malformed requests."""
    call = entry.build(svc, OWNER)
    r = send(svc, OWNER, call, svc.tokens)
    try:
        entry.owner(r, svc)
    finally:
        if entry.owner_mutates:
            restore(svc, set(entry.touches) | {"account"})


@pytest.mark.parametrize("entry,caller", [
    pytest.param(e, c, id=f"{e.label} <- {c}") for e in PUBLIC for c in (ANON, BOB, XSITE)])
def test_public_routes_tell_nothing_of_alices_data(svc, entry, caller):
    call = entry.build(svc, caller)
    before = snapshot(svc, {"account"})
    r = send(svc, caller, call, svc.tokens)
    assert r.status_code < 500, r.text
    assert not leaked(svc, r, call, caller), r.text[:500]
    assert snapshot(svc, {"account"}) == before


def test_a_link_does_not_lend_its_targets_rights(svc):
    """bob links to alice's file from his own space; reading through the link is refused."""
    B, b = svc.bob, svc.base
    before = snapshot(svc, {"files"})
    try:
        r = B.get(f"{b}/storage/ln", params={"from": "vos://lnqx", "to": ALICE_FILE})
        if r.status_code in (200, 201):
            for res in [B.get(f"{b}/storage/get", params={"name": "vos://lnqx"}),
                        B.get(f"{b}/vospace/files/bob/lnqx"),
                        B.get(f"{b}/storage/stat", params={"name": "vos://lnqx"})]:
                body = res.text
                if res.status_code == 200 and "/storage/xfer/" in body:
                    body = requests.get(body.strip()).text
                assert FILE_MARK not in body, (res.request.url, res.status_code)
                assert res.status_code in REFUSED or f'"size":{len(FILE_BYTES)}' not in body
            r = B.get(f"{b}/query/import", params={"table": "viaqx", "filename": "vos://lnqx"})
            assert r.status_code in REFUSED | {400}, r.text
    finally:
        cleanup_bob(svc)
    assert snapshot(svc, {"files"}) == before


def test_alices_data_and_password_are_intact_at_the_end(svc):
    snap = snapshot(svc, {"files", "table", "jobs", "group", "transfer", "account"})
    assert snap["files"][1] == FILE_BYTES
    assert snap["account"] == [200, 200]
    assert COL_MARK in svc.A.get(f"{svc.base}/query/list", params={"table": TABLE}).text
    assert "PENDING" in svc.A.get(f"{svc.base}/tap/async/{svc.ctx.job_pending}/phase").text
    assert '"carol"' in snap["group"][0]
    r = session().post(f"{svc.base}/api/auth/login",
                       data={"username": "alice", "password": "alice-password"})
    assert r.status_code == 200, r.text


def test_a_read_only_token_cannot_rewrite_and_run_a_pending_job(svc):
    """With only catalogs:read, alice's token can neither replace the query of a pending job
    of hers nor run it: that would be running a job without jobs:run."""
    A, b = svc.A, svc.base
    job = location_id(A.post(f"{b}/tap/async", allow_redirects=False, data={
        "LANG": "ADQL", "FORMAT": "csv", "QUERY": "SELECT TOP 1 source_id FROM gaia"}))
    ro = session(token=svc.tokens["alice_ro"])
    try:
        r = ro.post(f"{b}/tap/async/{job}/parameters", allow_redirects=False,
                    data={"QUERY": "SELECT TOP 2 ra AS rewritten FROM gaia"})
        assert r.status_code == 403 and "jobs:run" in r.text, (r.status_code, r.text[:200])
        r = ro.post(f"{b}/tap/async/{job}/phase", data={"PHASE": "RUN"}, allow_redirects=False)
        assert r.status_code == 403 and "jobs:run" in r.text, (r.status_code, r.text[:200])
        deadline = time.time() + 20
        while A.get(f"{b}/tap/async/{job}/phase").text in ("QUEUED", "EXECUTING") \
                and time.time() < deadline:
            time.sleep(0.05)
        phase = A.get(f"{b}/tap/async/{job}/phase").text
        result = A.get(f"{b}/tap/async/{job}/results/result").text
        assert phase == "PENDING" and "rewritten" not in result, (phase, result[:100])
    finally:
        A.delete(f"{b}/tap/async/{job}", allow_redirects=False)
