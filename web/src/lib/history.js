// The user's query history, kept in the browser (per user), newest first.
const MAX = 200;

export function historyKey(user) {
  return `meridian.history.${user ?? "anonymous"}`;
}

export function loadHistory(storage, user) {
  try {
    const v = JSON.parse(storage.getItem(historyKey(user)) ?? "[]");
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

/** Adds an entry (a repeated query moves to the top) and returns the new list. */
export function addHistory(storage, user, entry) {
  const list = loadHistory(storage, user).filter((e) => !(e.query === entry.query && e.lang === entry.lang));
  list.unshift({ ...entry, at: entry.at ?? new Date().toISOString() });
  list.length = Math.min(list.length, MAX);
  storage.setItem(historyKey(user), JSON.stringify(list));
  return list;
}
