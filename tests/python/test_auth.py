"""Accounts and tokens over HTTP: Meridian's own login, Data Lab's authClient wire calls,
401 and 403 answers, and async jobs that only their owner sees (pyvo with an AuthSession)."""

import re
import time

import pytest
import requests

from conftest import Server, client, run

# The astro-datalab client's own token pattern (dl/Util.py): anything else is silently
# replaced by the anonymous token.
DL_TOKEN = re.compile(r"([^/\s]+)\.(\d+)\.(\d+)\.((?:\$1\$\S{22,})|(?:\S+_access))")


@pytest.fixture(scope="module")
def auth_env(tmp_path_factory):
    return {"MERIDIAN_AUTH__DB": str(tmp_path_factory.mktemp("accounts") / "accounts.sqlite")}


@pytest.fixture(scope="module")
def service(store, auth_env):
    for name, password in [("alice", "alice-password"), ("bob", "bob-password-1")]:
        run("user", "add", name, data_dir=store, input=password + "\n", env=auth_env)
    with Server(store, env=auth_env) as s:
        yield s.url.removesuffix("/tap"), auth_env


def login(base, user, password):
    r = requests.post(f"{base}/api/auth/login", data={"username": user, "password": password})
    assert r.status_code == 200, r.text
    return r


def test_admin_command_refuses_bad_names_and_duplicates(store, service):
    _, env = service
    p = run("user", "add", "../evil", data_dir=store, input="long enough\n", env=env, check=False)
    assert p.returncode != 0 and "not allowed" in p.stderr
    p = run("user", "add", "alice", data_dir=store, input="long enough\n", env=env, check=False)
    assert p.returncode != 0 and "already exists" in p.stderr
    listed = run("user", "list", data_dir=store, env=env).stdout
    assert "alice" in listed and "bob" in listed and "password" not in listed


def test_login_token_works_as_bearer_data_lab_header_and_cookie(service):
    base, _ = service
    r = login(base, "alice", "alice-password")
    token = r.json()["token"]
    assert DL_TOKEN.fullmatch(token) and token.startswith("alice.")
    cookie = r.headers["Set-Cookie"]
    assert "meridian_token=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    for headers, cookies in [({"Authorization": f"Bearer {token}"}, None),
                             ({"X-DL-AuthToken": token}, None),
                             ({}, {"meridian_token": token})]:
        w = requests.get(f"{base}/api/auth/whoami", headers=headers, cookies=cookies)
        assert w.status_code == 200, w.text
        assert w.json()["user"] == "alice"
        assert "jobs:run" in w.json()["scopes"] and "admin" not in w.json()["scopes"]


def test_wrong_password_and_bad_tokens_get_401_with_a_reason(store, service):
    base, env = service
    r = requests.post(f"{base}/api/auth/login", data={"username": "alice", "password": "nope"})
    assert r.status_code == 401 and "wrong user name or password" in r.text
    assert requests.get(f"{base}/api/auth/whoami").status_code == 401

    q = {"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM gaia"}
    forged = "alice.1001.1001.$1$abcdefgh$abcdefghijklmnopqrstuv"
    r = requests.get(f"{base}/tap/sync", params=q, headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and "not issued" in r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert 'value="ERROR"' in r.text  # a DALI error document
    # Anonymous queries of public catalogs need no token.
    assert requests.get(f"{base}/tap/sync", params=q).status_code == 200

    # Logged out: revoked.
    token = login(base, "bob", "bob-password-1").json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    assert requests.post(f"{base}/api/auth/logout", headers=h).status_code == 200
    r = requests.get(f"{base}/tap/sync", params=q, headers=h)
    assert r.status_code == 401 and "revoked" in r.text

    # Expired.
    token = run("user", "token", "bob", "--expires", "1s", data_dir=store, env=env).stdout.strip()
    time.sleep(1.5)
    r = requests.get(f"{base}/api/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "expired" in r.text


def test_a_token_without_the_jobs_scope_cannot_run_async_jobs(store, service):
    base, env = service
    token = run("user", "token", "bob", "--scopes", "catalogs:read", data_dir=store,
                env=env).stdout.strip()
    h = {"Authorization": f"Bearer {token}"}
    r = requests.post(f"{base}/tap/async", headers=h, allow_redirects=False,
                      data={"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM gaia"})
    assert r.status_code == 403 and "jobs:run" in r.text
    q = {"LANG": "ADQL", "QUERY": "SELECT TOP 1 * FROM gaia"}
    assert requests.get(f"{base}/tap/sync", params=q, headers=h).status_code == 200
    # Nor change MyDB: writing, dropping, renaming and staging files need storage:write.
    dl = {"X-DL-AuthToken": token}
    for call, params in [("query", {"sql": "SELECT 1 AS x", "out": "mydb://t"}),
                         ("delete", {"table": "t"}), ("rename", {"source": "t", "target": "u"})]:
        r = requests.get(f"{base}/query/{call}", params=params, headers=dl)
        assert r.status_code == 403 and "storage:write" in r.text, (call, r.text)
    r = requests.post(f"{base}/storage/xfer", data=b"x\n1\n", headers={**dl, "X-DL-FileName": "a.csv"})
    assert r.status_code == 403


def test_data_lab_auth_client_calls(service):
    """The calls of astro-datalab's authClient, as its code makes them."""
    base, _ = service
    auth = f"{base}/auth"
    assert requests.get(auth).text.lower().startswith("hello world")
    r = requests.get(f"{auth}/login", params={"username": "alice", "profile": "default", "debug": "False"},
                     headers={"X-DL-Password": "alice-password"})
    assert r.status_code == 200
    token = r.text
    assert DL_TOKEN.fullmatch(token) and token == token.strip()

    def ask(call, **params):
        r = requests.get(f"{auth}/{call}", params={**params, "profile": "default"},
                         headers={"X-DL-AuthToken": token})
        assert r.status_code == 200, r.text
        return r.text

    assert ask("isValidToken", token=token) == "True"
    assert ask("isValidToken", token="alice.1001.1001.$1$xxxxxxxx$yyyyyyyyyyyyyyyyyyyyyy") == "False"
    assert ask("isValidUser", user="alice") == "True"
    assert ask("isValidUser", user="mallory") == "False"
    assert ask("isValidPassword", user="alice", password="alice-password") == "True"
    assert ask("isValidPassword", user="alice", password="guess") == "False"
    assert ask("isUserLoggedIn", user="alice") == "True"
    assert ask("isTokenLoggedIn", token=token) == "True"
    assert ask("hasAccess", user=token, resource="vos://") == "True"

    # A wrong password and an unknown user read the same, so that names cannot be probed.
    r = requests.get(f"{auth}/login", params={"username": "mallory"}, headers={"X-DL-Password": "x"})
    assert r.status_code == 401 and r.text == "Error: Invalid user name or password"
    r = requests.get(f"{auth}/login", params={"username": "alice"}, headers={"X-DL-Password": "x"})
    assert r.status_code == 401 and r.text == "Error: Invalid user name or password"

    # The client repeats the query string on logout.
    r = requests.get(f"{auth}/logout?token={token}&debug=False&token={token}&debug=False",
                     headers={"X-DL-AuthToken": token})
    assert r.status_code == 200 and r.text == "OK"
    assert ask("isValidToken", token=token) == "False"


def test_async_jobs_are_seen_and_controlled_only_by_their_owner(service):
    import pyvo
    from pyvo.auth import AuthSession
    base, _ = service
    url = f"{base}/tap"

    def session(user, password):
        s = AuthSession()
        s.credentials.set_cookie("meridian_token", login(base, user, password).json()["token"])
        svc = pyvo.dal.TAPService(url, session=s)
        s.update_from_capabilities(svc.capabilities)
        return svc

    alice, bob = session("alice", "alice-password"), session("bob", "bob-password-1")
    job = alice.submit_job("SELECT TOP 5 source_id FROM gaia")
    job.run().wait(timeout=60)
    assert job.phase == "COMPLETED"
    assert job.owner == "alice"
    assert len(job.fetch_result().to_table()) == 5

    def ids(svc):
        r = svc._session.get(f"{url}/async")
        assert r.status_code == 200
        return set(re.findall(r'jobref id="([^"]+)"', r.text))

    assert job.job_id in ids(alice)
    assert job.job_id not in ids(bob)
    # Another user's job does not exist for them: no phase, no results, no delete.
    for path in ["", "/phase", "/results/result", "/parameters"]:
        assert bob._session.get(f"{job.url}{path}").status_code == 404
    assert bob._session.post(f"{job.url}/phase", data={"PHASE": "ABORT"}).status_code == 404
    assert bob._session.delete(job.url, allow_redirects=False).status_code == 404
    # Nor for anonymous callers, who see only anonymous jobs.
    assert requests.get(job.url).status_code == 404
    anon = requests.get(f"{url}/async").text
    assert job.job_id not in anon
    job.delete()


def test_capabilities_declare_the_security_methods(service):
    base, _ = service
    caps = requests.get(f"{base}/tap/capabilities").text
    assert 'standardID="ivo://ivoa.net/sso#cookie"' in caps
    assert "<securityMethod/>" in caps  # anonymous access too


def test_self_registration_only_when_enabled(store, service, tmp_path):
    base, _ = service
    r = requests.post(f"{base}/api/auth/register", data={"username": "eve", "password": "eve-password"})
    assert r.status_code == 403 and "self-registration" in r.text
    env = {"MERIDIAN_AUTH__DB": str(tmp_path / "open.sqlite"), "MERIDIAN_AUTH__SELF_REGISTRATION": "true"}
    with Server(store, env=env) as s:
        open_base = s.url.removesuffix("/tap")
        r = requests.post(f"{open_base}/api/auth/register",
                          data={"username": "eve", "password": "eve-password", "email": "eve@example.org"})
        assert r.status_code == 201, r.text
        r = requests.post(f"{open_base}/api/auth/register", data={"username": "eve", "password": "other-pass"})
        assert r.status_code == 409 and "already exists" in r.text
        r = requests.post(f"{open_base}/api/auth/register", data={"username": "x/y", "password": "long enough"})
        assert r.status_code == 400 and "not allowed" in r.text
        r = requests.post(f"{open_base}/api/auth/register", data={"username": "zed", "password": "short"})
        assert r.status_code == 400 and "too short" in r.text
        assert login(open_base, "eve", "eve-password").json()["user"] == "eve"


def test_data_lab_password_reset(store, service):
    base, env = service
    run("user", "add", "frank", data_dir=store, input="frank-password\n", env=env)
    token = requests.get(f"{base}/auth/login", params={"username": "frank"},
                         headers={"X-DL-Password": "frank-password"}).text
    # Someone else's password: refused for a non-administrator.
    bob = requests.get(f"{base}/auth/login", params={"username": "bob"},
                       headers={"X-DL-Password": "bob-password-1"}).text
    r = requests.get(f"{base}/auth/passwordReset", params={"username": "frank", "token": bob},
                     headers={"X-DL-AuthToken": bob, "X-DL-Password": "hijacked!!"})
    assert r.status_code == 403 and r.text.startswith("Error: ")
    # One's own password: the current one must come too.
    r = requests.get(f"{base}/auth/passwordReset", params={"username": "frank", "token": token},
                     headers={"X-DL-AuthToken": token, "X-DL-Password": "frank-new-password"})
    assert r.status_code == 403 and "X-DL-Old-Password" in r.text, r.text
    r = requests.get(f"{base}/auth/passwordReset", params={"username": "frank", "token": token},
                     headers={"X-DL-AuthToken": token, "X-DL-Password": "frank-new-password",
                              "X-DL-Old-Password": "frank-password"})
    assert r.status_code == 200 and DL_TOKEN.fullmatch(r.text)
    # The old token and password no longer work; the new ones do.
    assert requests.get(f"{base}/auth/isValidToken", params={"token": token}).text == "False"
    assert requests.get(f"{base}/auth/isValidToken", params={"token": r.text}).text == "True"
    login(base, "frank", "frank-new-password")


def test_repeated_failed_logins_are_refused_for_a_while(store, service):
    base, env = service
    run("user", "add", "mallory", data_dir=store, input="mallory-password\n", env=env)
    # From an address of its own, so that other tests' failures do not count.
    http = client("127.0.0.42")
    for _ in range(5):
        r = http.post(f"{base}/api/auth/login", data={"username": "mallory", "password": "guess"})
        assert r.status_code == 401
    r = http.post(f"{base}/api/auth/login",
                  data={"username": "mallory", "password": "mallory-password"})
    assert r.status_code == 429 and "try again" in r.text
    # Other users log in as usual.
    login(base, "bob", "bob-password-1")


def test_the_login_cookie_is_secure_when_the_service_is_reached_over_https(store, service, tmp_path):
    _, env = service
    with Server(store, env={**env, "MERIDIAN_SERVER__PUBLIC_URL": "https://meridian.example.org"}) as s:
        r = login(s.url.removesuffix("/tap"), "alice", "alice-password")
        cookie = r.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie, cookie
