// Running queries as UWS jobs: the grid reads windows of a job's result, so that a result
// of any size stays on the server.
import { postForm, request, getText, getJson, arrowTable, ServiceError } from "./api.js";
import { parseJob, ACTIVE } from "./uws.js";

/** Creates and starts a job; returns the job. */
export async function submit({ query, lang = "ADQL", maxrec, runId = "portal" }) {
  const r = await postForm("tap/async", {
    REQUEST: "doQuery", LANG: lang, QUERY: query, PHASE: "RUN", RESPONSEFORMAT: "parquet", MAXREC: maxrec, RUNID: runId,
  });
  return parseJob(await r.text());
}

export async function getJob(id, { wait, phase, signal } = {}) {
  const q = new URLSearchParams();
  if (wait) q.set("WAIT", String(wait));
  if (phase) q.set("PHASE", phase);
  return parseJob(await getText(`tap/async/${encodeURIComponent(id)}${q.size ? "?" + q : ""}`, { signal }));
}

/** Waits for the job to finish (UWS blocking waits); `onphase` hears each phase. */
export async function waitJob(id, { signal, onphase = () => {} } = {}) {
  let job = await getJob(id, { signal });
  onphase(job);
  while (ACTIVE.has(job.phase)) {
    if (signal?.aborted) throw new ServiceError("cancelled", { kind: "aborted" });
    job = await getJob(id, { wait: 5, phase: job.phase, signal });
    onphase(job);
  }
  return job;
}

export async function abortJob(id) {
  await postForm(`tap/async/${encodeURIComponent(id)}/phase`, { PHASE: "ABORT" });
}

export async function deleteJob(id) {
  await request(`tap/async/${encodeURIComponent(id)}`, { method: "DELETE" });
}

/** The caller's latest jobs (one JSON document: phase, times, query, rows, error). */
export async function listJobs(last = 50) {
  const jobs = await getJson(`api/jobs?LAST=${last}`);
  return jobs
    .map((j) => ({
      ...j,
      parameters: { query: j.query ?? "", lang: j.lang ?? "ADQL", maxrec: j.maxrec ?? undefined },
      rows: Object.fromEntries((j.results ?? []).filter((r) => r.rows != null).map((r) => [r.id, r.rows])),
    }))
    .sort((a, b) => String(b.created ?? "").localeCompare(String(a.created ?? "")));
}

export function resultUrl(jobId, resultId = "result") {
  return `tap/async/${encodeURIComponent(jobId)}/results/${encodeURIComponent(resultId)}`;
}

/** A window of a finished result: { table (Arrow), total }. */
export async function fetchWindow(jobId, params, { signal, resultId = "result" } = {}) {
  const r = await request(`${resultUrl(jobId, resultId)}/window?${params}`, { signal });
  const total = Number(r.headers.get("X-Total-Rows") ?? 0);
  return { table: await arrowTable(r), total };
}
