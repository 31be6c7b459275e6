"""Security of accounts over HTTP: a password change needs the old password (or an
administrator's token) and never hands out more scopes than the caller's token has; every
password check is throttled by user name and client address and by client address, without
letting a stranger lock a user out; login failures and Data Lab's user calls do not tell
which user names exist.

Requests come from several loopback addresses (127.0.0.x, bound as the client's source
address) so that the service sees different clients."""

import os
import statistics
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import requests

from conftest import Server, add_users, client, personal_env, run

# As in accounts.rs: failures allowed per (user name, address) and per address, per window.
LOGIN_ATTEMPTS = 5
ADDRESS_ATTEMPTS = 20


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    env = personal_env(tmp_path_factory.mktemp("security-auth"))
    add_users(store, env, "alice", "bob", "carol", "dave", "erin", "fay", "gus", "hal", "ivy")
    run("user", "add", "root", "--admin", data_dir=store, input="root-password\n", env=env)
    with Server(store, env=env) as s:
        yield s.url.removesuffix("/tap"), env


def scoped_token(store, env, user, scopes):
    return run("user", "token", user, "--scopes", scopes, data_dir=store, env=env).stdout.strip()


def api_login(base, user, password, http=requests):
    return http.post(f"{base}/api/auth/login", data={"username": user, "password": password})


def dl_login(base, user, password, http=requests):
    return http.get(f"{base}/auth/login", params={"username": user, "profile": "default"},
                    headers={"X-DL-Password": password})


def reset(base, token, new, username=None, old=None, http=requests):
    headers = {"X-DL-AuthToken": token, "X-DL-Password": new}
    if old is not None:
        headers["X-DL-Old-Password"] = old
    params = {"token": token, "debug": "False"}
    if username is not None:
        params["username"] = username
    return http.get(f"{base}/auth/passwordReset", params=params, headers=headers)


def whoami(base, token):
    r = requests.get(f"{base}/api/auth/whoami", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, (r.json() if r.status_code == 200 else r.text)


def can_log_in(base, user, password, http=requests):
    return api_login(base, user, password, http).status_code == 200


# --- Finding 9: a read-only token must not take the account over. ------------------------

def test_a_read_only_token_cannot_reset_the_password(store, service):
    base, env = service
    token = scoped_token(store, env, "alice", "catalogs:read")
    for username in [None, "alice"]:
        r = reset(base, token, "taken-over!!", username=username)
        assert r.status_code == 403 and r.text.startswith("Error: "), r.text
        assert "alice." not in r.text  # no token in the answer
    assert can_log_in(base, "alice", "alice-password")
    assert not can_log_in(base, "alice", "taken-over!!")
    # The token itself still works for what it allows.
    assert whoami(base, token)[1]["scopes"] == ["catalogs:read"]


def test_changing_ones_password_needs_the_old_one_and_grants_no_more_scopes(store, service):
    base, env = service
    full = api_login(base, "bob", "bob-password").json()["token"]
    # Even a full token needs the current password.
    r = reset(base, full, "bob-new-password")
    assert r.status_code == 403 and "X-DL-Old-Password" in r.text
    r = reset(base, full, "bob-new-password", old="not bob's password")
    assert r.status_code == 403 and "current password is wrong" in r.text
    assert can_log_in(base, "bob", "bob-password")

    r = reset(base, full, "bob-new-password", username="bob", old="bob-password")
    assert r.status_code == 200, r.text
    new = r.text
    assert new.startswith("bob.") and new == new.strip()
    assert whoami(base, new)[1]["scopes"] == ["catalogs:read", "storage:write", "jobs:run"]
    assert whoami(base, full)[0] == 401  # every old token is revoked
    assert can_log_in(base, "bob", "bob-new-password")
    assert not can_log_in(base, "bob", "bob-password")

    # A read-only token with the old password may change it, and gets a read-only token.
    read = scoped_token(store, env, "bob", "catalogs:read")
    r = reset(base, read, "bob-third-password", old="bob-new-password")
    assert r.status_code == 200, r.text
    assert whoami(base, r.text)[1]["scopes"] == ["catalogs:read"]
    assert can_log_in(base, "bob", "bob-third-password")


def test_only_an_administrators_token_resets_another_users_password(store, service):
    base, env = service
    carol = api_login(base, "carol", "carol-password").json()["token"]
    dave = api_login(base, "dave", "dave-password").json()["token"]
    r = reset(base, dave, "carol-hijacked", username="carol")
    assert r.status_code == 403 and r.text.startswith("Error: ")
    # An administrator's token without the admin scope is not enough either.
    root_read = scoped_token(store, env, "root", "catalogs:read")
    assert reset(base, root_read, "carol-hijacked", username="carol").status_code == 403
    assert can_log_in(base, "carol", "carol-password")

    root = api_login(base, "root", "root-password").json()["token"]
    r = reset(base, root, "carol-reset-password", username="carol")
    assert r.status_code == 200, r.text
    # The answer is the administrator's own token, still valid: no token of carol's is
    # handed out.
    assert r.text == root and whoami(base, root)[1]["user"] == "root"
    assert whoami(base, carol)[0] == 401
    assert can_log_in(base, "carol", "carol-reset-password")
    assert not can_log_in(base, "carol", "carol-password")


def test_wrong_old_passwords_are_throttled(service):
    base, _ = service
    http = client("127.0.0.9")
    token = api_login(base, "gus", "gus-password", http).json()["token"]
    for i in range(LOGIN_ATTEMPTS):
        r = reset(base, token, "gus-new-password", old=f"guess {i}", http=http)
        assert r.status_code == 403, r.text
    r = reset(base, token, "gus-new-password", old="gus-password", http=http)
    assert r.status_code == 429 and "try again" in r.text
    assert can_log_in(base, "gus", "gus-password")


# --- Finding 13: throttled password checks that strangers cannot use to lock users out. ---

def test_is_valid_password_is_throttled(service):
    base, _ = service
    http = client("127.0.0.2")

    def is_valid(password):
        return http.get(f"{base}/auth/isValidPassword",
                        params={"user": "dave", "password": password, "profile": "default"})

    assert is_valid("dave-password").text == "True"
    for i in range(LOGIN_ATTEMPTS):
        r = is_valid(f"guess {i}")
        assert r.status_code == 200 and r.text == "False"
    r = is_valid("dave-password")
    assert r.status_code == 429 and r.text.startswith("Error: ") and "try again" in r.text
    # The same budget covers the logins of that name from that address ...
    assert api_login(base, "dave", "dave-password", http).status_code == 429
    assert dl_login(base, "dave", "dave-password", http).status_code == 429
    # ... but not dave from elsewhere.
    assert can_log_in(base, "dave", "dave-password", client("127.0.0.1"))


def test_a_strangers_failures_do_not_lock_the_user_out(service):
    base, _ = service
    stranger = client("127.0.0.3")
    for i in range(LOGIN_ATTEMPTS + 2):
        r = api_login(base, "erin", f"guess {i}", stranger)
        assert r.status_code in (401, 429)
    assert api_login(base, "erin", "erin-password", stranger).status_code == 429
    assert dl_login(base, "erin", "erin-password", stranger).status_code == 429
    # Erin, from her own address, logs in with either login.
    erin = client("127.0.0.4")
    assert can_log_in(base, "erin", "erin-password", erin)
    r = dl_login(base, "erin", "erin-password", erin)
    assert r.status_code == 200 and r.text.startswith("erin.")


def test_every_password_check_counts_against_one_budget(service):
    base, _ = service
    http = client("127.0.0.5")
    assert api_login(base, "fay", "guess 1", http).status_code == 401
    assert dl_login(base, "fay", "guess 2", http).status_code == 401
    r = http.get(f"{base}/auth/isValidPassword", params={"user": "fay", "password": "guess 3"})
    assert r.text == "False"
    assert api_login(base, "fay", "guess 4", http).status_code == 401
    assert dl_login(base, "fay", "guess 5", http).status_code == 401
    assert api_login(base, "fay", "fay-password", http).status_code == 429


def test_one_address_cannot_try_a_password_on_many_users(service):
    base, _ = service
    sprayer = client("127.0.0.6")
    names = [f"user{i}" for i in range(ADDRESS_ATTEMPTS - 2)] + ["hal", "ivy"]
    for name in names:
        r = api_login(base, name, "Password1", sprayer)
        assert r.status_code == 401, (name, r.text)
    # The address is refused for every name, even with the right password ...
    r = sprayer.get(f"{base}/auth/isValidPassword", params={"user": "someone", "password": "x"})
    assert r.status_code == 429
    assert api_login(base, "hal", "hal-password", sprayer).status_code == 429
    # ... and hal and ivy log in from elsewhere.
    other = client("127.0.0.7")
    assert can_log_in(base, "hal", "hal-password", other)
    assert can_log_in(base, "ivy", "ivy-password", other)


# --- Finding 14: user names cannot be enumerated. ----------------------------------------

def test_login_failures_read_the_same_whether_the_user_exists_or_not(service):
    base, _ = service
    http = client("127.0.0.8")
    for login in [api_login, dl_login]:
        known = login(base, "ivy", "not ivy's password", http)
        missing = login(base, "nobody-at-all", "not ivy's password", http)
        assert known.status_code == missing.status_code == 401
        assert known.text == missing.text and "nobody" not in missing.text
    assert missing.text == "Error: Invalid user name or password"

    # And take comparable time: a missing user's password is checked against a dummy hash.
    def seconds(name):
        times = []
        for i in range(3):
            t = time.perf_counter()
            assert dl_login(base, name, f"wrong {i}", http).status_code == 401
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    known, missing = seconds("hal"), seconds("nobody-else")
    assert missing > known / 3 and known > missing / 3, (known, missing)


def test_anonymous_callers_cannot_tell_which_users_exist(service):
    base, _ = service
    auth = f"{base}/auth"
    ivy = dl_login(base, "ivy", "ivy-password", client("127.0.0.10")).text
    hal = dl_login(base, "hal", "hal-password", client("127.0.0.10")).text

    def ask(call, token=None, **params):
        headers = {"X-DL-AuthToken": token} if token else {}
        r = requests.get(f"{auth}/{call}", params={**params, "profile": "default"}, headers=headers)
        assert r.status_code == 200, r.text
        return r.text

    # Anonymous: the same answer for a user who exists (and is logged in) and one who does not.
    for token in [None, "anonymous.0.0.anon_access"]:
        assert ask("isValidUser", token, user="ivy") == ask("isValidUser", token, user="nobody") == "False"
        assert ask("isUserLoggedIn", token, user="ivy") == ask("isUserLoggedIn", token, user="nobody") == "False"
    # Whether someone is logged in is told to them only.
    assert ask("isUserLoggedIn", ivy, user="ivy") == "True"
    assert ask("isUserLoggedIn", hal, user="ivy") == "False"
    # Token holders may check names (group owners add members by name).
    assert ask("isValidUser", ivy, user="hal") == "True"
    assert ask("isValidUser", ivy, user="nobody") == "False"


# --- The unmodified Data Lab client. ------------------------------------------------------

DATALAB_SCRIPT = textwrap.dedent("""
    import json, sys
    from dl import authClient as ac
    base = sys.argv[1]
    ac.set_svc_url(base + "/auth")
    seen = {"wrong": ac.login("alice", "not alice's password"),
            "missing": ac.login("nobody", "not alice's password"),
            "valid_user_anonymously": ac.isValidUser("alice")}
    token = ac.login("alice", "alice-password")
    seen["token"] = token
    seen["own_loggedin"] = ac.isUserLoggedIn("alice")
    # The client cannot send the current password: its own reset is refused ...
    seen["own_reset"] = ac.passwordReset(token, "alice", "alice-hijacked")
    seen["valid_after"] = ac.isValidToken(token)
    # ... while an administrator named root resets another user's password. (Client 2.24
    # then fails to save the answer, writing text to a file opened in binary mode, and
    # returns that error: what counts is what the service did.)
    root = ac.login("root", "root-password")
    seen["root_reset"] = ac.passwordReset(root, "hal", "hal-reset-by-root")
    seen["root_valid_after"] = ac.isValidToken(root)
    print(json.dumps(seen))
""")


def test_the_unmodified_data_lab_client(service, tmp_path):
    python = os.environ.get("DATALAB_PYTHON",
                            str(Path.home() / ".cache/meridian/datalab-venv/bin/python"))
    assert Path(python).exists(), f"astro-datalab's venv is missing at {python}: scripts/test.sh creates it"
    base, _ = service
    home = tmp_path / "home"
    home.mkdir()
    script = tmp_path / "datalab_security.py"
    script.write_text(DATALAB_SCRIPT)
    p = subprocess.run([python, script, base], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HOME": str(home)})
    assert p.returncode == 0, p.stderr[-3000:]
    import json
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen["wrong"] == seen["missing"] == "Error: Invalid user name or password", seen
    assert seen["valid_user_anonymously"] is False
    assert seen["token"].startswith("alice.")
    assert seen["own_loggedin"] is True
    assert "X-DL-Old-Password" in seen["own_reset"] and seen["valid_after"] is True
    assert can_log_in(base, "alice", "alice-password")
    assert "Error" not in seen["root_reset"] and seen["root_valid_after"] is True
    assert can_log_in(base, "hal", "hal-reset-by-root", client("127.0.0.11"))
