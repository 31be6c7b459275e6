// The user's storage through the VOSpace 2.1 REST API (nodes) and Data Lab's storage calls
// (upload URLs, moves).
import { request, getText } from "./api.js";

const VOS = "http://www.ivoa.net/xml/VOSpace/v2.0";
const XSI = "http://www.w3.org/2001/XMLSchema-instance";
export const CORE = "ivo://ivoa.net/vospace/core";

export function encodePath(path) {
  return path.split("/").filter(Boolean).map(encodeURIComponent).join("/");
}

/** The children of container `path` (`space/dir`): [{ name, path, kind, size, date, public }]. */
export async function list(path, parser = new DOMParser()) {
  const xml = await getText(`vospace/nodes/${encodePath(path)}`);
  const doc = parser.parseFromString(xml, "application/xml");
  const root = doc.documentElement;
  const nodes = root.getElementsByTagNameNS(VOS, "nodes")[0];
  if (!nodes) return [];
  return Array.from(nodes.children).map((n) => {
    const uri = n.getAttribute("uri");
    const props = {};
    for (const p of n.getElementsByTagNameNS(VOS, "property")) props[p.getAttribute("uri")] = p.textContent;
    const name = decodeURIComponent(uri.split("/").pop());
    return {
      name,
      path: `${path.replace(/\/$/, "")}/${name}`,
      kind: (n.getAttributeNS(XSI, "type") ?? "").replace(/^vos:/, ""),
      size: Number(props[`${CORE}#length`] ?? 0),
      date: props[`${CORE}#date`] ?? "",
      public: props[`${CORE}#ispublic`] === "true",
    };
  });
}

function nodeDoc(kind, path, props = []) {
  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/"/g, "&quot;");
  const p = props.map(([k, v]) => `<vos:property uri="${esc(k)}">${esc(v)}</vos:property>`).join("");
  return `<vos:node xmlns:vos="${VOS}" xmlns:xsi="${XSI}" xsi:type="vos:${kind}" uri="vos://${location.host}!vospace/${esc(path)}"><vos:properties>${p}</vos:properties></vos:node>`;
}

/** The node's URI as the service writes it, from a listing of its container. */
export async function nodeUri(path) {
  const xml = await getText(`vospace/nodes/${encodePath(path)}?detail=min`);
  return new DOMParser().parseFromString(xml, "application/xml").documentElement.getAttribute("uri");
}

async function withUri(kind, path, props) {
  // The service names its own authority: take it from the parent's URI.
  const parent = path.split("/").slice(0, -1).join("/");
  const puri = await nodeUri(parent);
  const uri = `${puri}/${encodeURIComponent(path.split("/").pop())}`;
  return nodeDoc(kind, path, props).replace(/uri="[^"]*"/, `uri="${uri.replace(/"/g, "&quot;")}"`);
}

export async function mkdir(path) {
  await request(`vospace/nodes/${encodePath(path)}`, { method: "PUT", headers: { "Content-Type": "text/xml" }, body: await withUri("ContainerNode", path) });
}

export async function remove(path) {
  await request(`vospace/nodes/${encodePath(path)}`, { method: "DELETE" });
}

export async function setPublic(path, on) {
  const uri = await nodeUri(path);
  const doc = nodeDoc("DataNode", path, [[`${CORE}#ispublic`, on ? "true" : "false"]]).replace(/uri="[^"]*"/, `uri="${uri}"`);
  await request(`vospace/nodes/${encodePath(path)}`, { method: "POST", headers: { "Content-Type": "text/xml" }, body: doc });
}

/** The Data Lab name of a node path (`space/dir/name` is `space://dir/name`). */
export function dlName(path) {
  const [space, ...rest] = path.split("/").filter(Boolean);
  return `${space}://${rest.join("/")}`;
}

export async function move(from, to) {
  return getText(`storage/mv?from=${encodeURIComponent(dlName(from))}&to=${encodeURIComponent(dlName(to))}`);
}

export function fileUrl(path) {
  return `vospace/files/${encodePath(path)}`;
}

/** Uploads `file` to `path` (`space/dir/name`), reporting progress (0..1). */
export async function upload(path, file, onprogress = () => {}) {
  const url = (await getText(`storage/put?name=${encodeURIComponent(dlName(path))}`)).trim();
  await new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", url);
    x.upload.onprogress = (e) => e.lengthComputable && onprogress(e.loaded / e.total);
    x.onload = () => (x.status < 300 ? resolve() : reject(new Error(x.responseText || `upload failed (${x.status})`)));
    x.onerror = () => reject(new Error("The connection was lost during the upload."));
    x.send(file);
  });
  onprogress(1);
}
