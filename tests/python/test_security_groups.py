"""Security of groups, names and storage URLs: a group's grants, files and tables do not
outlive it (a later group of the same name starts empty and is granted nothing); a removed
user's files, tables and groups go with them and their name is not given again; names that
stand for schemas and parts of the service are reserved; a user added to a group has no
access until they accept; a VOSpace PUT never empties an existing file; and the URLs the
service hands out are its own, whatever Host header a request carries."""

import io
import sqlite3
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import requests

from conftest import Server, add_users, personal_env, run, sessions_of, storage_get, storage_put

VOS = "http://www.ivoa.net/xml/VOSpace/v2.0"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CORE = "ivo://ivoa.net/vospace/core"
ROOT = "vos://meridian!vospace"
NS = {"vos": VOS}
USERS = ["alice", "bob", "carol", "dave", "mallory", "eve"]


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("security-groups")
    env = personal_env(d)
    add_users(store, env, *USERS)
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        sessions = sessions_of(base, USERS)
        yield base, sessions, store, env, d


def ls(sess, base, name):
    return sess.get(f"{base}/storage/ls", params={"name": name}).text


def count(sess, base, table):
    r = sess.get(f"{base}/tap/sync", params={"LANG": "ADQL", "FORMAT": "csv",
                                             "QUERY": f"SELECT COUNT(*) AS n FROM {table}"})
    return r.status_code, (int(pd.read_csv(io.StringIO(r.text))["n"][0])
                           if r.status_code == 200 else r.text)


def keep_table(sess, base, table):
    r = sess.get(f"{base}/query/query", params={
        "sql": "SELECT source_id, ra, dec FROM gaia WHERE dec > 60", "out": f"mydb://{table}"})
    assert r.status_code == 200, r.text


def node_doc(kind, path, props=()):
    props_xml = "".join(f'<vos:property uri="{k}">{v}</vos:property>' for k, v in props)
    return (f'<vos:node xmlns:vos="{VOS}" xmlns:xsi="{XSI}" xsi:type="vos:{kind}" '
            f'uri="{ROOT}/{path}"><vos:properties>{props_xml}</vos:properties></vos:node>')


def share(sess, base, path, group):
    r = sess.post(f"{base}/vospace/nodes/{path}",
                  data=node_doc("ContainerNode", path, [(f"{CORE}#groupread", group)]),
                  headers={"Content-Type": "text/xml"})
    assert r.status_code == 200, r.text
    return r


def invite(base, owner, group, user, role="ro"):
    r = owner.post(f"{base}/api/groups/{group}/members", data={"user": user, "role": role})
    assert r.status_code == 200, r.text
    return r.json()


def join(base, owner, member, group, name, role="ro"):
    assert invite(base, owner, group, name, role)["status"] == "invited"
    r = member.post(f"{base}/api/groups/{group}/members", data={"action": "accept"})
    assert r.status_code == 200, r.text


def test_grants_files_and_tables_do_not_outlive_a_dissolved_group(service):
    base, s, *_ = service
    alice, bob, mallory = s["alice"], s["bob"], s["mallory"]
    assert alice.post(f"{base}/api/groups", data={"name": "proj"}).status_code == 201
    join(base, alice, bob, "proj", "bob")
    # alice shares a directory of her home with proj; proj has files and a table.
    assert alice.get(f"{base}/storage/mkdir", params={"dir": "vos://shared"}).status_code == 201
    assert storage_put(alice, base, "vos://shared/plan.txt", b"the plan").status_code == 201
    share(alice, base, "alice/shared", "proj")
    assert storage_put(alice, base, "proj://notes.txt", b"notes").status_code == 201
    keep_table(alice, base, "proj.north")
    assert storage_get(bob, base, "alice://shared/plan.txt").content == b"the plan"
    code, rows = count(bob, base, "proj.north")
    assert code == 200 and rows > 0
    # Granting to a group that does not exist is refused: it could be made later by anyone.
    r = alice.post(f"{base}/vospace/nodes/alice/shared",
                   data=node_doc("ContainerNode", "alice/shared",
                                 [(f"{CORE}#groupread", "proj later")]))
    assert r.status_code == 400, r.text

    assert alice.delete(f"{base}/api/groups/proj").status_code == 204
    # The grant went with the group.
    props = ET.fromstring(alice.get(f"{base}/vospace/nodes/alice/shared").text)
    uris = {p.get("uri") for p in props.find("vos:properties", NS)}
    assert f"{CORE}#groupread" not in uris
    assert alice.get(f"{base}/storage/stat", params={"name": "vos://shared"}).json()[
        "groupread"] == ""

    # Another user takes the name: they get an empty group and nothing of the old one's.
    assert mallory.post(f"{base}/api/groups", data={"name": "proj"}).status_code == 201
    assert storage_get(mallory, base, "alice://shared/plan.txt").status_code == 404
    assert ls(mallory, base, "alice://shared") == ""
    assert ls(mallory, base, "proj://") == "public,tmp"
    assert storage_get(mallory, base, "proj://notes.txt").status_code == 404
    assert count(mallory, base, "proj.north")[0] == 400
    # bob was in the old proj, not in this one.
    assert storage_get(bob, base, "proj://notes.txt").status_code == 404
    assert mallory.delete(f"{base}/api/groups/proj").status_code == 204


def test_a_removed_users_files_tables_and_groups_go_and_the_name_is_not_reused(service):
    base, s, store, env, d = service
    eve, bob, mallory = s["eve"], s["bob"], s["mallory"]
    assert storage_put(eve, base, "vos://diary.txt", b"dear diary").status_code == 201
    keep_table(eve, base, "mine")
    assert eve.post(f"{base}/api/groups", data={"name": "evelab"}).status_code == 201
    join(base, eve, bob, "evelab", "bob")
    assert storage_put(eve, base, "evelab://results.csv", b"x\n1\n").status_code == 201
    keep_table(eve, base, "evelab.north")
    assert storage_get(bob, base, "evelab://results.csv").status_code == 200

    p = run("user", "remove", "eve", data_dir=store, env=env)
    assert "removed user 'eve'" in p.stdout and "evelab" in p.stdout
    # Her token is gone; her files, tables and group are deleted, not just hidden.
    assert eve.get(f"{base}/api/groups").status_code == 401
    assert bob.get(f"{base}/api/groups").json() == []
    with sqlite3.connect(d / "storage.sqlite") as db:
        left = db.execute(
            "SELECT path FROM nodes WHERE space IN ('eve', 'evelab')").fetchall()
    assert left == []
    assert not (d / "mydb" / "eve").exists() and not (d / "mydb" / "evelab").exists()

    # Her name is not given again, to a group or to a user.
    r = mallory.post(f"{base}/api/groups", data={"name": "eve"})
    assert r.status_code == 409, r.text
    assert storage_get(mallory, base, "eve://diary.txt").status_code == 404
    assert count(mallory, base, "eve.mine")[0] == 400
    p = run("user", "add", "eve", data_dir=store, input="another-password\n", env=env,
            check=False)
    assert p.returncode != 0
    # Her group's name is free, and the new group starts empty.
    assert mallory.post(f"{base}/api/groups", data={"name": "evelab"}).status_code == 201
    assert ls(mallory, base, "evelab://") == "public,tmp"
    assert storage_get(mallory, base, "evelab://results.csv").status_code == 404
    assert count(mallory, base, "evelab.north")[0] == 400
    assert mallory.delete(f"{base}/api/groups/evelab").status_code == 204


@pytest.mark.parametrize("name", ["mydb", "MyDB", "tap_upload", "TAP_SCHEMA", "ivoa", "public",
                                  "tmp", "information_schema", "admin", "anonymous", "gaia"])
def test_reserved_names_are_no_groups(service, name):
    base, s, *_ = service
    r = s["carol"].post(f"{base}/api/groups", data={"name": name})
    assert r.status_code == 400, r.text
    assert s["carol"].get(f"{base}/api/groups").json() == []


def test_reserved_and_case_colliding_names_are_refused(service):
    base, s, store, env, _ = service
    carol, dave = s["carol"], s["dave"]
    # A member's own MyDB keeps working: no group can be called mydb.
    keep_table(carol, base, "own")
    code, rows = count(carol, base, "mydb.own")
    assert code == 200 and rows > 0
    # Users and groups share one name space whatever the case.
    assert carol.post(f"{base}/api/groups", data={"name": "Bob"}).status_code == 409
    assert carol.post(f"{base}/api/groups", data={"name": "team"}).status_code == 201
    assert dave.post(f"{base}/api/groups", data={"name": "TEAM"}).status_code == 409
    # Nor can a new user take a reserved name or a group's.
    for name in ["tap_schema", "Team"]:
        p = run("user", "add", name, data_dir=store, input="long enough\n", env=env,
                check=False)
        assert p.returncode != 0, name
    assert carol.delete(f"{base}/api/groups/team").status_code == 204


def test_members_are_invited_and_consent(service):
    base, s, *_ = service
    alice, bob, carol, dave = s["alice"], s["bob"], s["carol"], s["dave"]
    assert alice.post(f"{base}/api/groups", data={"name": "club"}).status_code == 201
    assert storage_put(alice, base, "club://minutes.txt", b"minutes").status_code == 201

    # Invited: no access yet, but the invitation is shown to them.
    assert invite(base, alice, "club", "bob", "rw") == {
        "group": "club", "user": "bob", "role": "rw", "status": "invited"}
    assert storage_get(bob, base, "club://minutes.txt").status_code == 404
    assert storage_put(bob, base, "club://bob.txt", b"x").status_code == 404
    assert bob.get(f"{base}/api/groups").json() == [
        {"name": "club", "role": "rw", "invited": True, "by": "alice"}]
    shown = bob.get(f"{base}/api/groups/club").json()
    assert shown["invited"] is True and shown["owner"] == "alice" and "members" not in shown
    assert alice.get(f"{base}/api/groups/club").json()["invited"] == [
        {"user": "bob", "role": "rw"}]
    # Nobody accepts for someone else.
    r = carol.post(f"{base}/api/groups/club/members", data={"action": "accept"})
    assert r.status_code == 404

    # Accepted: a member with the role offered.
    r = bob.post(f"{base}/api/groups/club/members", data={"action": "accept"})
    assert r.status_code == 200 and r.json()["role"] == "rw", r.text
    assert storage_get(bob, base, "club://minutes.txt").content == b"minutes"
    assert storage_put(bob, base, "club://bob.txt", b"x").status_code == 201
    assert bob.get(f"{base}/api/groups").json() == [{"name": "club", "role": "rw"}]

    # Declined, either way; withdrawn by the owner.
    invite(base, alice, "club", "carol")
    r = carol.post(f"{base}/api/groups/club/members", data={"action": "decline"})
    assert r.status_code == 204, r.text
    assert storage_get(carol, base, "club://minutes.txt").status_code == 404
    assert carol.get(f"{base}/api/groups").json() == []
    invite(base, alice, "club", "carol")
    assert carol.delete(f"{base}/api/groups/club/members/carol").status_code == 204
    assert carol.post(f"{base}/api/groups/club/members",
                      data={"action": "accept"}).status_code == 404
    invite(base, alice, "club", "dave")
    assert alice.delete(f"{base}/api/groups/club/members/dave").status_code == 204
    assert dave.get(f"{base}/api/groups").json() == []

    # Members leave, and lose access.
    assert bob.delete(f"{base}/api/groups/club/members/bob").status_code == 204
    assert storage_get(bob, base, "club://minutes.txt").status_code == 404
    assert alice.get(f"{base}/api/groups/club").json()["members"] == [
        {"user": "alice", "role": "owner"}]
    assert alice.delete(f"{base}/api/groups/club").status_code == 204


def test_a_vospace_put_of_an_existing_file_is_a_duplicate_node(service):
    base, s, *_ = service
    carol = s["carol"]
    assert storage_put(carol, base, "vos://kept.dat", b"precious bytes").status_code == 201
    r = carol.put(f"{base}/vospace/nodes/carol/kept.dat",
                  data=node_doc("DataNode", "carol/kept.dat"),
                  headers={"Content-Type": "text/xml"})
    assert r.status_code == 409 and r.text.startswith("DuplicateNode"), r.text
    assert storage_get(carol, base, "vos://kept.dat").content == b"precious bytes"
    # A new one is still made empty.
    r = carol.put(f"{base}/vospace/nodes/carol/empty.dat",
                  data=node_doc("DataNode", "carol/empty.dat"),
                  headers={"Content-Type": "text/xml"})
    assert r.status_code == 201, r.text
    assert storage_get(carol, base, "vos://empty.dat").content == b""


def test_urls_handed_out_ignore_the_host_header(service):
    base, s, *_ = service
    carol = s["carol"]
    evil = {"Host": "evil.example"}

    def ours(url):
        assert url.startswith(base + "/") and "evil.example" not in url, url
        return url

    # Data Lab's put and get URLs.
    url = ours(carol.get(f"{base}/storage/put", params={"name": "vos://h.txt"},
                         headers=evil).text)
    assert requests.put(url, data=b"hi").status_code == 201
    url = ours(carol.get(f"{base}/storage/get", params={"name": "vos://h.txt"},
                         headers=evil).text)
    assert requests.get(url).content == b"hi"

    # VOSpace: the synchronous transfer's job, its endpoint, and transfer jobs.
    doc = (f'<vos:transfer xmlns:vos="{VOS}" version="2.1"><vos:target>{ROOT}/carol/h.txt'
           f"</vos:target><vos:direction>pullFromVoSpace</vos:direction>"
           f'<vos:protocol uri="{CORE}#httpget"/></vos:transfer>')
    r = carol.post(f"{base}/vospace/synctrans", data=doc, allow_redirects=False,
                   headers={**evil, "Content-Type": "text/xml"})
    assert r.status_code == 303, r.text
    details = carol.get(ours(r.headers["Location"]), headers=evil).text
    endpoint = ET.fromstring(details).find("vos:protocol/vos:endpoint", NS).text
    assert requests.get(ours(endpoint)).content == b"hi"
    r = carol.post(f"{base}/vospace/synctrans", allow_redirects=False, headers=evil,
                   data={"TARGET": f"{ROOT}/carol/h.txt", "DIRECTION": "pullFromVoSpace",
                         "PROTOCOL": f"{CORE}#httpget", "REQUEST": "redirect"})
    assert requests.get(ours(r.headers["Location"])).content == b"hi"
    move = (f'<vos:transfer xmlns:vos="{VOS}" version="2.1"><vos:target>{ROOT}/carol/h.txt'
            f"</vos:target><vos:direction>{ROOT}/carol/tmp</vos:direction>"
            f"<vos:keepBytes>true</vos:keepBytes></vos:transfer>")
    r = carol.post(f"{base}/vospace/transfers", data=move, allow_redirects=False,
                   headers={**evil, "Content-Type": "text/xml"})
    job = ours(r.headers["Location"])
    r = carol.post(f"{job}/phase", data={"PHASE": "RUN"}, allow_redirects=False, headers=evil)
    ours(r.headers["Location"])
    caps = requests.get(f"{base}/vospace/capabilities", headers=evil).text
    assert "evil.example" not in caps
