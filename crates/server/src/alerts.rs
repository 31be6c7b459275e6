//! Alert filters over HTTP (`/api/alerts/filters`): a logged-in user stores ADQL filters
//! over the incoming alerts (see `meridian_alerts::evaluate` for the tables they read),
//! with their outputs (a Kafka topic, a webhook, a MyDB table); lists, reads, pauses,
//! resumes and deletes them; and follows a filter's matches as server-sent events
//! (`/api/alerts/filters/{id}/events`, resumable with `Last-Event-ID`) or pages through
//! them (`/api/alerts/filters/{id}/matches?after=SEQ`). `meridian alerts consume` runs the
//! filters and delivers the matches; both share the filters' database.
//!
//! | call | parameters | answer |
//! |---|---|---|
//! | `GET /api/alerts/filters` | | the caller's filters |
//! | `POST /api/alerts/filters` | `name`, `query`, `kafka_topic`, `webhook`, `mydb_table` | 201, the filter; 400 with the ADQL error |
//! | `GET /api/alerts/filters/{id}` | | the filter, with its delivery counts |
//! | `DELETE /api/alerts/filters/{id}` | | 204 |
//! | `POST /api/alerts/filters/{id}/pause`, `/resume` | | the filter |
//! | `GET /api/alerts/filters/{id}/matches` | `after`, `limit` | matches after `after` |
//! | `GET /api/alerts/filters/{id}/events` | `Last-Event-ID` or `after`, `follow` | `text/event-stream` |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use meridian_alerts::filters::{Filter, FilterStore, Outputs, State as FilterState};
use meridian_services::accounts::Scope;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// The alert filters of a service, and how webhooks are checked.
pub struct AlertFilters {
    /// The filters' database.
    pub store: Arc<FilterStore>,
    /// Whether webhooks may reach this machine and private networks.
    pub webhook_allow_private: bool,
}

fn filters(state: &AppState) -> Result<&AlertFilters> {
    state
        .alerts
        .as_deref()
        .ok_or_else(|| Error::NotFound("this service runs no alert filters".into()))
}

/// The JSON of a filter, with its delivery counts.
fn describe(store: &FilterStore, f: &Filter) -> Result<serde_json::Value> {
    let (pending, delivered, failed) = store.delivery_counts(f.id)?;
    let mut v = serde_json::to_value(f).map_err(|e| Error::Internal(e.to_string()))?;
    v["deliveries"] = serde_json::json!({
        "pending": pending, "delivered": delivered, "failed": failed,
    });
    Ok(v)
}

/// `GET /api/alerts/filters`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response> {
    let user = caller.identity()?.user.clone();
    let af = filters(&state)?;
    let list = af
        .store
        .list(Some(&user))?
        .iter()
        .map(|f| describe(&af.store, f))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(list).into_response())
}

/// `POST /api/alerts/filters`: checks the query against the alert tables and stores the
/// filter, active.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: DaliRequest,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let af = filters(&state)?;
    let p = &req.params;
    let name = p.required("name")?.trim().to_string();
    let query = p.required("query")?.to_string();
    let opt = |k: &str| {
        p.get(k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
    };
    let outputs = Outputs {
        kafka_topic: opt("kafka_topic"),
        webhook: opt("webhook"),
        mydb_table: opt("mydb_table")
            .map(|t| meridian_services::mydb::strip_scheme(&t).to_string()),
    };
    if let Some(t) = &outputs.mydb_table {
        meridian_services::mydb::check_table_name(t)?;
    }
    if let Some(t) = &outputs.kafka_topic {
        meridian_alerts::filters::check_topic(t)?;
    }
    meridian_alerts::filters::check_name(&name)?;
    if let Some(url) = outputs.webhook.clone() {
        let allow = af.webhook_allow_private;
        tokio::task::spawn_blocking(move || meridian_alerts::outputs::check_webhook(&url, allow))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
    }
    let evaluator =
        meridian_alerts::evaluate::Evaluator::new(state.engine.clone(), Some(state.mydb.clone()));
    evaluator.validate(&user, &query).await?;
    let f = af.store.add(&user, &name, &query, &outputs)?;
    tracing::info!(filter = f.id, owner = %user, name = %name, "alert filter added");
    Ok((StatusCode::CREATED, Json(describe(&af.store, &f)?)).into_response())
}

/// The caller's filter `id` (404 when it is not theirs).
fn owned(state: &AppState, caller: &Caller, id: i64) -> Result<(Arc<FilterStore>, Filter)> {
    let user = caller.identity()?.user.clone();
    let af = filters(state)?;
    let f = af.store.owned(&user, id)?;
    Ok((af.store.clone(), f))
}

/// `GET /api/alerts/filters/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Response> {
    let (store, f) = owned(&state, &caller, id)?;
    Ok(Json(describe(&store, &f)?).into_response())
}

/// `DELETE /api/alerts/filters/{id}`.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Response> {
    caller.user_with(Scope::WriteStorage)?;
    let (store, f) = owned(&state, &caller, id)?;
    store.remove(f.id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/alerts/filters/{id}/pause`.
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Response> {
    set_state(state, caller, id, FilterState::Paused).await
}

/// `POST /api/alerts/filters/{id}/resume`: runs the filter again (clearing the reason a
/// failure paused it for).
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Response> {
    set_state(state, caller, id, FilterState::Active).await
}

async fn set_state(state: AppState, caller: Caller, id: i64, to: FilterState) -> Result<Response> {
    caller.user_with(Scope::WriteStorage)?;
    let (store, f) = owned(&state, &caller, id)?;
    store.set_state(f.id, to, None)?;
    let f = store.owned(&f.owner, f.id)?;
    Ok(Json(describe(&store, &f)?).into_response())
}

/// Paging parameters of the matches.
#[derive(Debug, serde::Deserialize)]
pub struct Page {
    after: Option<i64>,
    limit: Option<usize>,
    /// Events only: `false` ends the stream once the matches found so far are sent.
    follow: Option<bool>,
}

/// `GET /api/alerts/filters/{id}/matches?after=SEQ&limit=N`: matches in the order they
/// were found, each `{"seq", "alertId", "match"}` (the match as the outputs receive it).
pub async fn matches(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
) -> Result<Response> {
    let (store, f) = owned(&state, &caller, id)?;
    let limit = page.limit.unwrap_or(1000).clamp(1, 10_000);
    let rows = store.after(f.id, page.after.unwrap_or(0), limit)?;
    let out = rows
        .iter()
        .map(|q| {
            let m: serde_json::Value = serde_json::from_str(&q.payload)
                .map_err(|e| Error::Internal(format!("a stored match: {e}")))?;
            Ok(serde_json::json!({"seq": q.seq, "alertId": q.alert_id, "match": m}))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(out).into_response())
}

/// `GET /api/alerts/filters/{id}/events`: the filter's matches as server-sent events
/// (`event: match`, `id:` the match's sequence number, `data:` the match's JSON), from
/// after `Last-Event-ID` (or `?after=`; by default only new ones), for as long as the
/// client listens (or, with `follow=false`, until the matches found so far are sent).
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Result<Response> {
    let (store, f) = owned(&state, &caller, id)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(page.after);
    let start = match resume {
        Some(s) => s,
        None => {
            // Only matches found from now on.
            let mut last = 0;
            loop {
                let rows = store.after(f.id, last, 10_000)?;
                match rows.last() {
                    Some(q) => last = q.seq,
                    None => break,
                }
            }
            last
        }
    };
    let follow = page.follow.unwrap_or(true);
    let stream = futures::stream::unfold(
        (store, f.id, start, std::collections::VecDeque::new()),
        move |(store, id, mut last, mut queue)| async move {
            loop {
                if let Some(q) = queue.pop_front() {
                    let q: meridian_alerts::filters::Queued = q;
                    let event = Event::default()
                        .event("match")
                        .id(q.seq.to_string())
                        .data(q.payload);
                    return Some((Ok::<_, Infallible>(event), (store, id, last, queue)));
                }
                let s = store.clone();
                let rows = tokio::task::spawn_blocking(move || s.after(id, last, 500))
                    .await
                    .ok()
                    .and_then(|r| r.ok());
                match rows {
                    Some(rows) if !rows.is_empty() => {
                        last = rows.last().map_or(last, |q| q.seq);
                        queue.extend(rows);
                    }
                    _ if !follow => return None,
                    // The filter is gone (or its database unreadable): the stream ends.
                    _ if matches!(store.get(id), Ok(None) | Err(_)) => return None,
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
