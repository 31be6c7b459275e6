// UWS documents (job lists and jobs) as plain objects.
const UWS = "http://www.ivoa.net/xml/UWS/v1.0";

function text(el, name) {
  const e = el.getElementsByTagNameNS(UWS, name)[0];
  return e ? e.textContent.trim() : null;
}

export function parseJob(xml, parser = new DOMParser()) {
  const doc = parser.parseFromString(xml, "application/xml");
  const job = doc.getElementsByTagNameNS(UWS, "job")[0];
  if (!job) throw new Error("not a UWS job document");
  const parameters = {};
  for (const p of job.getElementsByTagNameNS(UWS, "parameter")) parameters[p.getAttribute("id").toLowerCase()] = p.textContent;
  const results = [];
  for (const r of job.getElementsByTagNameNS(UWS, "result")) {
    results.push({
      id: r.getAttribute("id"),
      href: r.getAttributeNS("http://www.w3.org/1999/xlink", "href"),
      size: Number(r.getAttribute("size") ?? 0),
      mime: r.getAttribute("mime-type"),
    });
  }
  const error = job.getElementsByTagNameNS(UWS, "message")[0]?.textContent?.trim() ?? null;
  return {
    id: text(job, "jobId"),
    runId: text(job, "runId"),
    owner: text(job, "ownerId"),
    phase: text(job, "phase"),
    created: text(job, "creationTime"),
    started: text(job, "startTime"),
    ended: text(job, "endTime"),
    parameters,
    results,
    error,
  };
}

export const ACTIVE = new Set(["PENDING", "QUEUED", "EXECUTING", "HELD", "SUSPENDED"]);
