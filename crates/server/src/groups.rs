//! Groups over HTTP (`/api/groups`): a user creates a group, its owner and admins add
//! members and set their roles (`owner`, `admin`, `rw`, `ro`) or remove them, members
//! leave, and the owner dissolves it with its storage space and MyDB tables. A group's
//! files are `<group>://path` in the storage calls (and `/vospace/nodes/<group>/...`); its
//! tables are `<group>.<table>` in queries and `mydb://<group>.<table>` as a destination.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_services::accounts::Scope;
use meridian_services::groups::Role;

use crate::AppState;
use crate::auth::Caller;
use crate::error::Result;
use crate::params::DaliRequest;

/// `GET /api/groups`: the caller's groups with their role in each.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response> {
    let user = caller.identity()?.user.clone();
    let groups: Vec<_> = state
        .accounts
        .groups_of(&user)?
        .into_iter()
        .map(|(g, r)| serde_json::json!({"name": g, "role": r.as_str()}))
        .collect();
    Ok(Json(groups).into_response())
}

/// `POST /api/groups` (`name`): a new group owned by the caller, with its storage space.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: DaliRequest,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let name = req.params.required("name")?.trim().to_string();
    let group = state.accounts.create_group(&user, &name)?;
    state.storage.ensure_space(&group.name, &user)?;
    tracing::info!(user, group = %group.name, "group created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"name": group.name, "owner": group.owner})),
    )
        .into_response())
}

/// `GET /api/groups/{name}`: its owner and members, for its members.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response> {
    let user = caller.identity()?.user.clone();
    let members: Vec<_> = state
        .accounts
        .members(&user, &name)?
        .into_iter()
        .map(|(u, r)| serde_json::json!({"user": u, "role": r.as_str()}))
        .collect();
    let owner = state.accounts.group(&name)?.map(|g| g.owner);
    Ok(Json(serde_json::json!({"name": name, "owner": owner, "members": members})).into_response())
}

/// `DELETE /api/groups/{name}`: the owner dissolves the group, its files and its tables.
pub async fn dissolve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    state.accounts.dissolve_group(&user, &name)?;
    state.storage.remove_space(&name).await?;
    state.mydb.remove_space(&name)?;
    tracing::info!(user, group = name, "group dissolved");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/groups/{name}/members` (`user`, `role`, default `ro`): adds a member or
/// changes their role.
pub async fn set_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    req: DaliRequest,
) -> Result<Response> {
    let me = caller.user_with(Scope::WriteStorage)?.to_string();
    let member = req.params.required("user")?.trim().to_string();
    let role = Role::parse(req.params.get("role").unwrap_or("ro"))?;
    state.accounts.set_member(&me, &name, &member, role)?;
    tracing::info!(
        user = me,
        group = name,
        member,
        role = role.as_str(),
        "group member set"
    );
    Ok(
        Json(serde_json::json!({"group": name, "user": member, "role": role.as_str()}))
            .into_response(),
    )
}

/// `DELETE /api/groups/{name}/members/{user}`: removes a member (or the caller leaves).
pub async fn remove_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, member)): Path<(String, String)>,
) -> Result<Response> {
    let me = caller.user_with(Scope::WriteStorage)?.to_string();
    state.accounts.remove_member(&me, &name, &member)?;
    tracing::info!(user = me, group = name, member, "group member removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}
