// Sky view helpers: the HiPS this service serves (from /hips/list), footprints of images
// (ObsCore s_region as a DALI polygon) and Aladin Lite's options that keep it offline.

/** HiPS properties records from the text of /hips/list. */
export function parseHipsList(text) {
  const out = [];
  for (const block of text.split(/\n\s*\n/)) {
    const p = {};
    for (const line of block.split("\n")) {
      const m = /^\s*([\w.-]+)\s*=\s*(.*?)\s*$/.exec(line);
      if (m && !line.trimStart().startsWith("#")) p[m[1]] = m[2];
    }
    if (p.hips_service_url) out.push(p);
  }
  return out;
}

/** The HiPS to show first: an image HiPS, else a density map, else null. */
export function chooseSurvey(list) {
  const images = list.filter((p) => (p.dataproduct_type ?? "image") === "image");
  const byFormat = (p) => (p.hips_tile_format ?? "").split(/\s+/);
  const preferred = images.find((p) => !/density/i.test(p.obs_title ?? p.creator_did ?? "")) ?? images[0];
  if (!preferred) return null;
  const formats = byFormat(preferred);
  return { url: preferred.hips_service_url, format: formats.includes("png") ? "png" : formats.includes("jpeg") ? "jpeg" : "fits", title: preferred.obs_title ?? preferred.creator_did ?? preferred.hips_service_url };
}

/** [[ra, dec], ...] of a DALI polygon (a flat list of numbers), or null. */
export function polygonVertices(value) {
  const v = Array.isArray(value) ? value.map(Number) : typeof value === "string" ? value.trim().split(/[\s,]+/).map(Number) : null;
  if (!v || v.length < 6 || v.length % 2 || v.some((x) => !Number.isFinite(x))) return null;
  const out = [];
  for (let i = 0; i < v.length; i += 2) out.push([v[i], v[i + 1]]);
  return out;
}

/** Options of Aladin Lite that make it call nothing outside this service. */
export function offlineOptions(extra = {}) {
  return {
    log: false,
    hipsList: [],
    showReticle: true,
    showCooGrid: false,
    showFrame: true,
    showZoomControl: true,
    showLayersControl: false,
    showGotoControl: false,
    showSimbadPointerControl: false,
    showCooGridControl: true,
    showSettingsControl: false,
    showShareControl: false,
    showFullscreenControl: false,
    showProjectionControl: false,
    showContextMenu: false,
    showStatusBar: false,
    ...extra,
  };
}

/** The centre (mean position, RA wrapped) and a field of view covering the points. */
export function centreOf(ra, dec) {
  let sx = 0, sy = 0, sz = 0, n = 0;
  for (let i = 0; i < ra.length; i++) {
    if (!Number.isFinite(ra[i]) || !Number.isFinite(dec[i])) continue;
    const a = (ra[i] * Math.PI) / 180, d = (dec[i] * Math.PI) / 180;
    sx += Math.cos(d) * Math.cos(a); sy += Math.cos(d) * Math.sin(a); sz += Math.sin(d); n++;
  }
  if (!n) return null;
  const r = Math.hypot(sx, sy, sz);
  const cra = ((Math.atan2(sy, sx) * 180) / Math.PI + 360) % 360;
  const cdec = (Math.asin(sz / r) * 180) / Math.PI;
  let maxd = 0;
  const c = [Math.cos((cdec * Math.PI) / 180) * Math.cos((cra * Math.PI) / 180), Math.cos((cdec * Math.PI) / 180) * Math.sin((cra * Math.PI) / 180), Math.sin((cdec * Math.PI) / 180)];
  for (let i = 0; i < ra.length; i += Math.max(1, Math.floor(ra.length / 5000))) {
    const a = (ra[i] * Math.PI) / 180, d = (dec[i] * Math.PI) / 180;
    const dot = c[0] * Math.cos(d) * Math.cos(a) + c[1] * Math.cos(d) * Math.sin(a) + c[2] * Math.sin(d);
    maxd = Math.max(maxd, (Math.acos(Math.min(1, Math.max(-1, dot))) * 180) / Math.PI);
  }
  return { ra: cra, dec: cdec, fov: Math.min(180, Math.max(0.05, maxd * 2.4)) };
}
