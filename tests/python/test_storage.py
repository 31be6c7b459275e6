"""Users' files over Data Lab's storage wire: isolation between users, the public folder,
path traversal, odd names, the quota under concurrent uploads, an interrupted upload, and
401/403 answers. Each check is made with plain HTTP, as the client would send it."""

import concurrent.futures
import socket
import urllib.parse

import pytest
import requests

from conftest import Server, add_users, personal_env, run, token_of


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("storage")
    env = personal_env(d, MERIDIAN_STORAGE__QUOTA_MIB="1")
    add_users(store, env, "alice", "bob")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        yield base, {name: token_of(base, name) for name in ["alice", "bob"]}, d / "bytes"


def call(base, token, verb, **params):
    headers = {"X-DL-AuthToken": token} if token else {}
    return requests.get(f"{base}/storage/{verb}", params=params, headers=headers)


def put(base, token, name, data):
    r = call(base, token, "put", name=name)
    if r.status_code != 200:
        return r
    assert r.text.startswith("http://") and r.text == r.text.strip()
    return requests.put(r.text, data=data)


def get(base, token, name):
    r = call(base, token, "get", name=name)
    if r.status_code != 200:
        return r
    return requests.get(r.text)


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_a_users_files_are_invisible_to_others_unless_public(service):
    base, t, _ = service
    assert put(base, t["alice"], "vos://secret.txt", b"alice's notes").status_code == 201
    assert get(base, t["alice"], "vos://secret.txt").content == b"alice's notes"
    # Bob, through alice's space: every call answers as for a missing node.
    missing = call(base, t["bob"], "stat", name="alice://nothing-here")
    for verb, params in [("stat", {"name": "alice://secret.txt"}),
                         ("isdir", {"name": "alice://"}),
                         ("get", {"name": "alice://secret.txt"}),
                         ("rm", {"file": "alice://secret.txt"}),
                         ("mv", {"from": "alice://secret.txt", "to": "vos://"})]:
        r = call(base, t["bob"], verb, **params)
        assert r.status_code == 404 == missing.status_code, (verb, r.status_code, r.text)
        assert r.text == missing.text, verb
    assert call(base, t["bob"], "ls", name="alice://").text == ""
    assert call(base, t["bob"], "access", name="alice://secret.txt", mode="r").text == "false"
    # Writing into alice's space is refused.
    # No upload URL is handed out for what the caller may not write.
    r = call(base, t["bob"], "put", name="alice://planted.txt")
    assert r.status_code == 404 and "http" not in r.text, r.text
    assert call(base, t["alice"], "ls", name="vos://").text == "public,secret.txt,tmp"
    # Her public folder is readable by anyone, anonymous callers included, never writable.
    assert put(base, t["alice"], "vos://public/paper.txt", b"preprint").status_code == 201
    assert get(base, t["bob"], "alice://public/paper.txt").content == b"preprint"
    assert get(base, None, "alice://public/paper.txt").content == b"preprint"
    assert call(base, None, "ls", name="alice://public").text == "paper.txt"
    assert call(base, t["bob"], "rm", file="alice://public/paper.txt").status_code == 403
    # Anonymous callers have no home, and personal calls need a login.
    r = call(base, None, "ls", name="vos://")
    assert r.status_code == 401 and "login" in r.text
    assert call(base, None, "mkdir", dir="alice://public/x").status_code == 401


def test_path_traversal_never_leaves_the_users_tree(service):
    base, t, bytes_dir = service
    put(base, t["bob"], "vos://mine.txt", b"bob's")
    for name in ["vos://../alice/secret.txt", "vos://tmp/../../alice/secret.txt",
                 "vos://./secret.txt", "vos://a/%2e%2e/b", "vos://..%2Falice%2Fsecret.txt",
                 "vos://tmp\\..\\x"]:
        for verb, key in [("get", "name"), ("stat", "name"), ("rm", "file"),
                          ("mkdir", "dir"), ("put", "name")]:
            r = call(base, t["bob"], verb, **{key: urllib.parse.unquote(name)})
            assert r.status_code == 400, (verb, name, r.status_code, r.text)
            assert "not allowed" in r.text, r.text
    # An absolute path is a name in the home, not a file of the machine.
    r = put(base, t["bob"], "vos:///etc/passwd", b"x")
    assert r.status_code == 404  # vos://etc does not exist in bob's home
    # The bytes live under random keys: nothing named after a user path is on disk.
    assert all("passwd" not in str(p) and "secret" not in str(p) for p in files_under(bytes_dir))


def test_odd_names_are_kept_or_refused_clearly(service):
    base, t, _ = service
    odd = "vos://tmp/spectrum (v2) é+ü.fits"
    assert put(base, t["bob"], odd, b"SIMPLE").status_code == 201
    assert "spectrum (v2) é+ü.fits" in call(base, t["bob"], "ls", name="vos://tmp").text
    assert get(base, t["bob"], odd).content == b"SIMPLE"
    r = call(base, t["bob"], "mkdir", dir="vos://tmp/bad\x01name")
    assert r.status_code == 400 and "control characters" in r.text
    r = call(base, t["bob"], "mkdir", dir="vos://tmp/" + "x" * 300)
    assert r.status_code == 400 and "255" in r.text
    assert call(base, t["bob"], "mkdir", dir="vos://tmp/d").status_code == 201
    r = call(base, t["bob"], "mkdir", dir="vos://tmp/d")
    assert r.status_code == 409 and r.text == "A Node already exists with the requested URI."


def test_the_quota_holds_against_concurrent_uploads(service):
    base, t, bytes_dir = service
    before = files_under(bytes_dir)
    # Quota 1 MiB: one 0.6 MiB upload fits, two at once do not.
    blob = b"\0" * (600 << 10)
    urls = [call(base, t["alice"], "put", name=f"vos://tmp/q{i}.bin").text for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda u: requests.put(u, data=blob).status_code, urls))
    assert codes == [201, 413, 413, 413], codes
    listed = call(base, t["alice"], "ls", name="vos://tmp").text.split(",")
    assert len([n for n in listed if n.startswith("q")]) == 1
    assert len(files_under(bytes_dir)) == len(before) + 1
    # Refused before the bytes are read: the answer comes with a Content-Length alone.
    r = call(base, t["alice"], "put", name="vos://tmp/huge.bin")
    reply = raw_put(r.text, b"", declared=50 << 20)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"quota" in reply


def raw_put(url, body, declared):
    """PUT `body` to `url` announcing `declared` bytes, then close the connection."""
    u = urllib.parse.urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"PUT {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                  f"Content-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
                  .encode() + body)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply


def test_an_interrupted_upload_leaves_no_partial_file(service):
    base, t, bytes_dir = service
    before = files_under(bytes_dir)
    r = call(base, t["bob"], "put", name="vos://tmp/cut.fits")
    raw_put(r.text, b"x" * 100_000, declared=300_000)
    assert "cut.fits" not in call(base, t["bob"], "ls", name="vos://tmp").text
    assert call(base, t["bob"], "stat", name="vos://tmp/cut.fits").status_code == 404
    assert files_under(bytes_dir) == before
    # The transfer URL was used once and is gone.
    assert requests.put(r.text, data=b"again").status_code == 404


def test_wrong_tokens_and_missing_scopes(service, store):
    base, t, _ = service
    r = call(base, t["alice"] + "x", "ls", name="vos://")
    assert r.status_code == 401 and "token" in r.text.lower()
    assert "WWW-Authenticate" in r.headers
    # A read-only token lists but does not write.
    env = {"MERIDIAN_AUTH__DB": str(service[2].parent / "accounts.sqlite")}
    ro = run("user", "token", "alice", "--scopes", "catalogs:read", data_dir=store,
             env=env).stdout.strip()
    assert call(base, ro, "ls", name="vos://").status_code == 200
    r = call(base, ro, "mkdir", dir="vos://newdir")
    assert r.status_code == 403 and "storage:write" in r.text


def test_files_fetched_from_urls_only_when_allowed(service, store, tmp_path):
    import http.server
    import threading
    base, t, _ = service
    payload = b"a spectrum\n" * 1000
    (tmp_path / "spec.txt").write_bytes(payload)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # On by default (this service), but not from this machine or a private network.
    r = call(base, t["alice"], "load", name="vos://tmp/fetched.txt", endpoint=f"{url}/spec.txt")
    assert r.status_code == 400 and "private network" in r.text, r.text
    d = tmp_path / "svc"
    d.mkdir()
    env = personal_env(d, MERIDIAN_SERVER__ALLOW_URL_UPLOADS="true",
                       MERIDIAN_SERVER__URL_UPLOADS_ALLOW_PRIVATE="true")
    add_users(store, env, "pia")
    try:
        with Server(store, env=env) as s:
            b = s.url.removesuffix("/tap")
            tok = token_of(b, "pia")
            # Data Lab's load, then VOSpace's pullToVoSpace (an asynchronous transfer).
            r = call(b, tok, "load", name="vos://tmp/a.txt", endpoint=f"{url}/spec.txt")
            assert r.status_code == 200 and r.text == "OK", r.text
            assert get(b, tok, "vos://tmp/a.txt").content == payload
            doc = ('<vos:transfer xmlns:vos="http://www.ivoa.net/xml/VOSpace/v2.0" version="2.1">'
                   "<vos:target>vos://meridian!vospace/pia/tmp/b.txt</vos:target>"
                   "<vos:direction>pullToVoSpace</vos:direction>"
                   '<vos:protocol uri="ivo://ivoa.net/vospace/core#httpget">'
                   f"<vos:endpoint>{url}/spec.txt</vos:endpoint></vos:protocol></vos:transfer>")
            r = requests.post(f"{b}/vospace/transfers?PHASE=RUN", data=doc,
                              headers={"Authorization": f"Bearer {tok}", "Content-Type": "text/xml"})
            assert "<uws:phase>COMPLETED</uws:phase>" in r.text, r.text
            assert get(b, tok, "vos://tmp/b.txt").content == payload
            # A missing remote file stores nothing.
            r = call(b, tok, "load", name="vos://tmp/c.txt", endpoint=f"{url}/missing.txt")
            assert r.status_code == 400, r.text
            assert call(b, tok, "ls", name="vos://tmp").text == "a.txt,b.txt"
    finally:
        httpd.shutdown()
