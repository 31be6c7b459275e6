"""VOSpace 2.1 REST binding, checked against the standard's text (IVOA REC-VOSpace-2.1):
nodes (create, get, set properties, delete), ContainerNode/DataNode/LinkNode, the fault
names and statuses, synchronous transfers (pushToVoSpace, pullFromVoSpace, by document
and by parameters), asynchronous transfers (move, copy) as UWS jobs, and the service's
capabilities."""

import xml.etree.ElementTree as ET

import pytest
import requests

from conftest import Server, add_users, personal_env, token_of

VOS = "http://www.ivoa.net/xml/VOSpace/v2.0"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
UWS = "http://www.ivoa.net/xml/UWS/v1.0"
CORE = "ivo://ivoa.net/vospace/core"
ROOT = "vos://meridian!vospace"
NS = {"vos": VOS, "uws": UWS}


@pytest.fixture(scope="module")
def service(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("vospace")
    env = personal_env(d)
    sessions = {}
    add_users(store, env, "carol", "dave")
    with Server(store, env=env) as s:
        base = s.url.removesuffix("/tap")
        for name in ["carol", "dave"]:
            sess = requests.Session()
            sess.headers["Authorization"] = f"Bearer {token_of(base, name)}"
            sessions[name] = sess
        yield base + "/vospace", sessions


def node_doc(kind, uri, props=(), target=None):
    props_xml = "".join(
        f'<vos:property uri="{k}" xsi:nil="true"/>' if v is None
        else f'<vos:property uri="{k}">{v}</vos:property>' for k, v in props)
    target_xml = f"<vos:target>{target}</vos:target>" if target else ""
    return (f'<vos:node xmlns:vos="{VOS}" xmlns:xsi="{XSI}" xsi:type="vos:{kind}" uri="{uri}">'
            f"<vos:properties>{props_xml}</vos:properties>{target_xml}</vos:node>")


def put_node(sess, base, path, kind, props=(), target=None):
    return sess.put(f"{base}/nodes/{path}", data=node_doc(kind, f"{ROOT}/{path}", props, target),
                    headers={"Content-Type": "text/xml"})


def props_of(xml_text):
    root = ET.fromstring(xml_text)
    return {p.get("uri"): p.text for p in root.find("vos:properties", NS)}


def transfer_doc(target, direction, protocol=None, keep=False):
    proto = f'<vos:protocol uri="{protocol}"/>' if protocol else ""
    return (f'<vos:transfer xmlns:vos="{VOS}" version="2.1"><vos:target>{target}</vos:target>'
            f"<vos:direction>{direction}</vos:direction>{proto}"
            f"<vos:keepBytes>{str(keep).lower()}</vos:keepBytes></vos:transfer>")


def test_capabilities_and_service_metadata(service):
    base, s = service
    caps = ET.fromstring(requests.get(f"{base}/capabilities").text)
    ids = {c.get("standardID") for c in caps}
    assert {"ivo://ivoa.net/std/VOSpace/v2.0#nodes", "ivo://ivoa.net/std/VOSpace/v2.0#transfers",
            "ivo://ivoa.net/std/VOSpace#sync-2.1"} <= ids
    assert "true" in requests.get(f"{base}/availability").text
    protocols = ET.fromstring(requests.get(f"{base}/protocols").text)
    assert protocols.find("vos:accepts/vos:protocol", NS).get("uri") == f"{CORE}#httpput"
    assert protocols.find("vos:provides/vos:protocol", NS).get("uri") == f"{CORE}#httpget"
    props = ET.fromstring(requests.get(f"{base}/properties").text)
    assert f"{CORE}#description" in {p.get("uri") for p in props.iter(f"{{{VOS}}}property")}


def test_nodes_are_created_read_changed_and_deleted(service):
    base, s = service
    c = s["carol"]
    home = ET.fromstring(c.get(f"{base}/nodes/carol").text)
    assert home.get(f"{{{XSI}}}type") == "vos:ContainerNode"
    assert home.get("uri") == f"{ROOT}/carol"
    children = [n.get("uri") for n in home.find("vos:nodes", NS)]
    assert children == [f"{ROOT}/carol/public", f"{ROOT}/carol/tmp"]

    r = put_node(c, base, "carol/data", "ContainerNode")
    assert r.status_code == 201, r.text
    assert ET.fromstring(r.text).get(f"{{{XSI}}}type") == "vos:ContainerNode"
    r = put_node(c, base, "carol/data", "ContainerNode")
    assert r.status_code == 409 and r.text.startswith("DuplicateNode")
    r = put_node(c, base, "carol/missing/x", "ContainerNode")
    assert r.status_code == 404 and r.text.startswith("ContainerNotFound")
    # The uri in the document must be the node's.
    r = c.put(f"{base}/nodes/carol/data/y", data=node_doc("ContainerNode", f"{ROOT}/carol/other"))
    assert r.status_code == 400 and "InvalidURI" in r.text

    r = put_node(c, base, "carol/data/notes.txt", "DataNode",
                 props=[(f"{CORE}#description", "observing notes"), ("ivo://example/x#k", "v")])
    assert r.status_code == 201, r.text
    got = c.get(f"{base}/nodes/carol/data/notes.txt")
    assert ET.fromstring(got.text).get(f"{{{XSI}}}type") == "vos:DataNode"
    p = props_of(got.text)
    assert p[f"{CORE}#description"] == "observing notes" and p["ivo://example/x#k"] == "v"
    assert p[f"{CORE}#length"] == "0" and p[f"{CORE}#creator"] == "carol"

    # Properties: set, and removed with xsi:nil; read-only ones are ignored.
    r = c.post(f"{base}/nodes/carol/data/notes.txt",
               data=node_doc("DataNode", f"{ROOT}/carol/data/notes.txt",
                             [(f"{CORE}#description", None), (f"{CORE}#ispublic", "true"),
                              (f"{CORE}#length", "999")]))
    assert r.status_code == 200, r.text
    p = props_of(c.get(f"{base}/nodes/carol/data/notes.txt").text)
    assert f"{CORE}#description" not in p and p[f"{CORE}#ispublic"] == "true"
    assert p[f"{CORE}#length"] == "0"
    # Public now: anyone reads it; nobody else changes it.
    assert requests.get(f"{base}/nodes/carol/data/notes.txt").status_code == 200
    r = s["dave"].post(f"{base}/nodes/carol/data/notes.txt",
                       data=node_doc("DataNode", f"{ROOT}/carol/data/notes.txt",
                                     [(f"{CORE}#description", "mine")]))
    assert r.status_code == 403 and r.text.startswith("PermissionDenied")

    # A LinkNode carries its target; detail=min lists children without properties.
    r = put_node(c, base, "carol/data/latest", "LinkNode", target=f"{ROOT}/carol/data/notes.txt")
    assert r.status_code == 201, r.text
    link = ET.fromstring(c.get(f"{base}/nodes/carol/data/latest").text)
    assert link.find("vos:target", NS).text == f"{ROOT}/carol/data/notes.txt"
    listing = ET.fromstring(c.get(f"{base}/nodes/carol/data", params={"detail": "min"}).text)
    assert [n.get(f"{{{XSI}}}type") for n in listing.find("vos:nodes", NS)] == [
        "vos:LinkNode", "vos:DataNode"]
    assert len(ET.fromstring(c.get(f"{base}/nodes/carol/data", params={"limit": 1}).text)
               .find("vos:nodes", NS)) == 1

    # A container is deleted with everything in it.
    assert c.delete(f"{base}/nodes/carol/data").status_code == 204
    r = c.get(f"{base}/nodes/carol/data/notes.txt")
    assert r.status_code == 404 and r.text.startswith("NodeNotFound")


def test_bad_requests_get_the_standards_faults(service):
    base, s = service
    c = s["carol"]
    r = c.put(f"{base}/nodes/carol/x", data="<vos:node", headers={"Content-Type": "text/xml"})
    assert r.status_code == 400
    r = c.put(f"{base}/nodes/carol/x", data=node_doc("StrangeNode", f"{ROOT}/carol/x"))
    assert r.status_code == 400 and "TypeNotSupported" in r.text
    for bad in ["carol/../dave", "carol/%2e%2e/dave", "carol/a%5Cb"]:
        r = c.get(f"{base}/nodes/{bad}")
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert r.status_code == 400 or r.text.startswith("NodeNotFound")
    # Another user's private nodes do not exist for you; anonymous callers write nothing.
    put_node(s["dave"], base, "dave/private", "ContainerNode")
    missing = c.get(f"{base}/nodes/dave/no-such-node")
    r = c.get(f"{base}/nodes/dave/private")
    assert r.status_code == missing.status_code == 404
    assert r.text.startswith("NodeNotFound")
    assert requests.put(f"{base}/nodes/dave/x",
                        data=node_doc("ContainerNode", f"{ROOT}/dave/x")).status_code == 401


def test_synchronous_push_then_pull(service):
    base, s = service
    c = s["carol"]
    data = bytes(range(256)) * 1000
    r = c.post(f"{base}/synctrans", data=transfer_doc(f"{ROOT}/carol/tmp/blob.bin",
                                                      "pushToVoSpace", f"{CORE}#httpput"),
               headers={"Content-Type": "text/xml"}, allow_redirects=False)
    assert r.status_code == 303, r.text
    details = ET.fromstring(c.get(r.headers["Location"]).text)
    assert details.find("vos:direction", NS).text == "pushToVoSpace"
    proto = details.find("vos:protocol", NS)
    assert proto.get("uri") == f"{CORE}#httpput"
    endpoint = proto.find("vos:endpoint", NS).text
    # The endpoint carries its own permission: no credentials needed, used once.
    assert requests.put(endpoint, data=data).status_code == 201
    assert requests.put(endpoint, data=data).status_code == 404
    p = props_of(c.get(f"{base}/nodes/carol/tmp/blob.bin").text)
    assert p[f"{CORE}#length"] == str(len(data))

    r = c.post(f"{base}/synctrans", data=transfer_doc(f"{ROOT}/carol/tmp/blob.bin",
                                                      "pullFromVoSpace", f"{CORE}#httpget"),
               headers={"Content-Type": "text/xml"})
    endpoint = ET.fromstring(r.text).find("vos:protocol/vos:endpoint", NS).text
    assert requests.get(endpoint).content == data
    # The parameter form with REQUEST=redirect goes straight to the bytes.
    r = c.post(f"{base}/synctrans", data={"TARGET": f"{ROOT}/carol/tmp/blob.bin",
                                          "DIRECTION": "pullFromVoSpace",
                                          "PROTOCOL": f"{CORE}#httpget", "REQUEST": "redirect"})
    assert r.status_code == 200 and r.content == data
    # Someone else's file cannot be pulled; a protocol we do not speak is refused.
    r = s["dave"].post(f"{base}/synctrans", data=transfer_doc(
        f"{ROOT}/carol/tmp/blob.bin", "pullFromVoSpace", f"{CORE}#httpget"))
    assert r.status_code == 404
    r = c.post(f"{base}/synctrans", data=transfer_doc(
        f"{ROOT}/carol/tmp/blob.bin", "pullFromVoSpace", "ivo://ivoa.net/vospace/core#ftpget"))
    assert r.status_code == 400 and "ProtocolNotSupported" in r.text


def test_asynchronous_move_and_copy(service):
    base, s = service
    c = s["carol"]
    put_node(c, base, "carol/a", "ContainerNode")
    put_node(c, base, "carol/b", "ContainerNode")
    r = c.post(f"{base}/synctrans", data={"TARGET": f"{ROOT}/carol/a/f.txt",
                                          "DIRECTION": "pushToVoSpace",
                                          "PROTOCOL": f"{CORE}#httpput", "REQUEST": "redirect"},
               allow_redirects=False)
    assert requests.put(r.headers["Location"], data=b"payload").status_code == 201

    # Copy (keepBytes=true), created PENDING and run by POSTing PHASE=RUN.
    r = c.post(f"{base}/transfers", data=transfer_doc(f"{ROOT}/carol/a/f.txt",
                                                      f"{ROOT}/carol/b", keep=True),
               headers={"Content-Type": "text/xml"}, allow_redirects=False)
    assert r.status_code == 303
    job = r.headers["Location"]
    assert c.get(f"{job}/phase").text == "PENDING"
    c.post(f"{job}/phase", data={"PHASE": "RUN"})
    doc = ET.fromstring(c.get(job).text)
    assert doc.find("uws:phase", NS).text == "COMPLETED"
    assert c.get(f"{base}/nodes/carol/b/f.txt").status_code == 200
    assert c.get(f"{base}/nodes/carol/a/f.txt").status_code == 200

    # Move (keepBytes=false) of a container, run at creation.
    r = c.post(f"{base}/transfers?PHASE=RUN", data=transfer_doc(
        f"{ROOT}/carol/a", f"{ROOT}/carol/b/moved"), headers={"Content-Type": "text/xml"})
    assert ET.fromstring(r.text).find("uws:phase", NS).text == "COMPLETED"
    assert c.get(f"{base}/nodes/carol/a").status_code == 404
    moved = ET.fromstring(c.get(f"{base}/nodes/carol/b/moved").text)
    assert [n.get("uri") for n in moved.find("vos:nodes", NS)] == [f"{ROOT}/carol/b/moved/f.txt"]

    # A failing transfer ends in ERROR with the fault; others cannot see the job.
    r = c.post(f"{base}/transfers?PHASE=RUN", data=transfer_doc(
        f"{ROOT}/carol/nothing", f"{ROOT}/carol/b"), allow_redirects=False)
    job = r.headers["Location"]
    assert c.get(f"{job}/phase").text == "ERROR"
    assert c.get(f"{job}/error").text.startswith("NodeNotFound")
    assert s["dave"].get(job).status_code == 404
