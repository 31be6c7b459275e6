//! `GET /api/notebooks`: whether the service runs a notebook hub, where users open it,
//! and what went wrong if it is not running (the portal's "My notebooks").

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// `{"enabled": false}` without a hub; else `{"enabled": true, "state", "url", "problem"}`
/// (`state` one of `starting`, `running`, `failed`, `stopped`).
pub async fn status(State(state): State<AppState>) -> Response {
    match &state.notebooks {
        None => Json(serde_json::json!({"enabled": false})).into_response(),
        Some(hub) => {
            let s = hub.status();
            Json(serde_json::json!({
                "enabled": true,
                "state": s.state,
                "url": s.url,
                "problem": s.problem,
            }))
            .into_response()
        }
    }
}
