"""Groups with roles over HTTP: a group's storage space and MyDB schema reached by its
members with their role's rights (read-only members read, read-write members write,
others see nothing), membership managed by owner and admins (an added user is invited and
reaches nothing until they accept), dissolution by the owner."""

import io

import pandas as pd
import pytest

from conftest import Server, add_users, personal_env, sessions_of, storage_get, storage_put


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("groups")
    env = personal_env(d)
    users = ["gina", "hugo", "iris"]
    add_users(store, env, *users)
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        sessions = sessions_of(base, users)
        yield base, sessions


def tap_count(sess, base, table):
    r = sess.get(f"{base}/tap/sync", params={"LANG": "ADQL", "FORMAT": "csv",
                                             "QUERY": f"SELECT COUNT(*) AS n FROM {table}"})
    return r.status_code, r.text


def test_a_groups_files_and_tables_follow_roles(service):
    base, s = service
    gina, hugo, iris = s["gina"], s["hugo"], s["iris"]
    r = gina.post(f"{base}/api/groups", data={"name": "survey"})
    assert r.status_code == 201, r.text
    assert gina.post(f"{base}/api/groups", data={"name": "survey"}).status_code == 409
    assert gina.post(f"{base}/api/groups", data={"name": "hugo"}).status_code == 409
    assert gina.post(f"{base}/api/groups", data={"name": "../x"}).status_code == 400
    assert gina.get(f"{base}/api/groups").json() == [{"name": "survey", "role": "owner"}]

    # Before joining, hugo sees neither the group nor its files.
    assert storage_put(gina, base, "survey://catalog.csv", b"id\n1\n2\n").status_code == 201
    assert hugo.get(f"{base}/api/groups/survey").status_code == 404
    assert storage_get(hugo, base, "survey://catalog.csv").status_code == 404
    assert hugo.get(f"{base}/storage/ls", params={"name": "survey://"}).text == ""

    # Invited: nothing until hugo accepts. Read-only: reads, cannot write or manage.
    r = gina.post(f"{base}/api/groups/survey/members", data={"user": "hugo", "role": "ro"})
    assert r.status_code == 200 and r.json()["status"] == "invited", r.text
    assert storage_get(hugo, base, "survey://catalog.csv").status_code == 404
    r = hugo.post(f"{base}/api/groups/survey/members", data={"action": "accept"})
    assert r.status_code == 200, r.text
    assert storage_get(hugo, base, "survey://catalog.csv").content == b"id\n1\n2\n"
    assert hugo.get(f"{base}/storage/ls", params={"name": "survey://"}).text == \
        "catalog.csv,public,tmp"
    assert storage_put(hugo, base, "survey://mine.csv", b"x").status_code == 403
    r = hugo.post(f"{base}/api/groups/survey/members", data={"user": "iris", "role": "ro"})
    assert r.status_code == 403

    # Read-write: writes files and tables.
    gina.post(f"{base}/api/groups/survey/members", data={"user": "hugo", "role": "rw"})
    assert storage_put(hugo, base, "survey://mine.csv", b"x").status_code == 201
    members = gina.get(f"{base}/api/groups/survey").json()["members"]
    assert members == [{"user": "gina", "role": "owner"}, {"user": "hugo", "role": "rw"}]

    # The group's MyDB schema: a table written by one member, read by another, hidden from
    # everyone else.
    r = gina.get(f"{base}/query/query", params={
        "sql": "SELECT source_id, ra, dec FROM gaia WHERE dec > 60", "out": "mydb://survey.north"})
    assert r.status_code == 200, r.text
    rows = int(r.text.split()[1])
    code, body = tap_count(hugo, base, "survey.north")
    assert code == 200 and int(pd.read_csv(io.StringIO(body))["n"][0]) == rows > 0
    code, body = tap_count(iris, base, "survey.north")
    assert code == 400, body
    gina.post(f"{base}/api/groups/survey/members", data={"user": "iris", "role": "ro"})
    assert tap_count(iris, base, "survey.north")[0] == 400
    # Accepting by naming oneself as the member works too.
    r = iris.post(f"{base}/api/groups/survey/members", data={"user": "iris"})
    assert r.status_code == 200 and r.json()["status"] == "member", r.text
    assert tap_count(iris, base, "survey.north")[0] == 200
    r = iris.get(f"{base}/query/query", params={
        "sql": "SELECT 1 AS x", "out": "mydb://survey.t"})
    assert r.status_code == 403 and "read-only" in r.text

    # Removed members lose access; only the owner dissolves; dissolving removes everything.
    assert gina.delete(f"{base}/api/groups/survey/members/hugo").status_code == 204
    assert storage_get(hugo, base, "survey://catalog.csv").status_code == 404
    assert tap_count(hugo, base, "survey.north")[0] == 400
    assert iris.delete(f"{base}/api/groups/survey").status_code == 403
    assert iris.delete(f"{base}/api/groups/survey/members/iris").status_code == 204
    assert gina.delete(f"{base}/api/groups/survey").status_code == 204
    assert gina.get(f"{base}/api/groups").json() == []
    assert gina.get(f"{base}/storage/ls", params={"name": "survey://"}).text == ""
    # The name is free again.
    assert gina.post(f"{base}/api/groups", data={"name": "survey"}).status_code == 201
    assert gina.get(f"{base}/storage/ls", params={"name": "survey://"}).text == "public,tmp"
