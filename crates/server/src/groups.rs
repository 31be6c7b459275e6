//! Groups over HTTP (`/api/groups`): a user creates a group; its owner and admins invite
//! members with a role (`admin`, `rw`, `ro`), change their roles or remove them; an invited
//! user has no access until they accept, and may decline; members leave; and the owner
//! dissolves the group with its storage space, MyDB tables and the grants nodes give it. A
//! group's files are `<group>://path` in the storage calls (and `/vospace/nodes/<group>/...`);
//! its tables are `<group>.<table>` in queries and `mydb://<group>.<table>` as a destination.
//!
//! An invitation is answered on the members resource: `POST /api/groups/{name}/members`
//! with `action=accept` (or with `user` the caller's own name) accepts it, `action=decline`
//! or `DELETE /api/groups/{name}/members/{me}` declines it. [`accept`] and [`decline`] are
//! the same answers as handlers of their own, for `POST /api/groups/{name}/accept` and
//! `/decline`.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use meridian_services::accounts::Scope;
use meridian_services::groups::{Role, purge};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// `GET /api/groups`: the caller's groups with their role in each, then the groups they
/// are invited to (`"invited": true`, with the role offered and who invited them).
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response> {
    let user = caller.identity()?.user.clone();
    let mut groups: Vec<_> = state
        .accounts
        .groups_of(&user)?
        .into_iter()
        .map(|(g, r)| serde_json::json!({"name": g, "role": r.as_str()}))
        .collect();
    groups.extend(state.accounts.invitations_of(&user)?.into_iter().map(
        |(g, r, by)| serde_json::json!({"name": g, "role": r.as_str(), "invited": true, "by": by}),
    ));
    Ok(Json(groups).into_response())
}

/// Refuses a group name that would stand for something else: a survey collection
/// (`<name>://` names its files) or a served table.
fn check_free_of_service(state: &AppState, name: &str) -> Result<()> {
    let clash = if state
        .storage
        .collection(name)
        .or_else(|| {
            state
                .storage
                .collections()
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
        })
        .is_some()
    {
        "a file collection"
    } else if state
        .engine
        .tables()
        .any(|(t, _)| t.eq_ignore_ascii_case(name))
    {
        "a served table"
    } else {
        return Ok(());
    };
    Err(Error::Services(meridian_services::Error::Invalid(format!(
        "'{name}' is the name of {clash}: choose another group name"
    ))))
}

/// `POST /api/groups` (`name`): a new group owned by the caller, with its storage space.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: DaliRequest,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let name = req.params.required("name")?.trim().to_string();
    check_free_of_service(&state, &name)?;
    let group = state.accounts.create_group(&user, &name)?;
    // Nothing an earlier holder of the name left (files, tables, grants) reaches the new
    // group: it starts empty.
    state.storage.revoke_stale_grants(&group.name, group.id)?;
    state.storage.remove_space(&group.name).await?;
    state.mydb.remove_space(&group.name)?;
    state.storage.ensure_space(&group.name, &user, group.id)?;
    tracing::info!(user, group = %group.name, id = group.id, "group created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"name": group.name, "owner": group.owner})),
    )
        .into_response())
}

/// `GET /api/groups/{name}`: its owner, members and open invitations, for its members; its
/// owner and the role offered, for a user invited to it.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response> {
    let user = caller.identity()?.user.clone();
    let owner = state.accounts.group(&name)?.map(|g| g.owner);
    let members = match state.accounts.members(&user, &name) {
        Ok(m) => m,
        Err(e) => {
            return match state.accounts.invitation(&name, &user)? {
                Some(role) => Ok(Json(serde_json::json!({
                    "name": name, "owner": owner, "invited": true, "role": role.as_str()
                }))
                .into_response()),
                None => Err(e.into()),
            };
        }
    };
    let as_json = |list: Vec<(String, Role)>| -> Vec<serde_json::Value> {
        list.into_iter()
            .map(|(u, r)| serde_json::json!({"user": u, "role": r.as_str()}))
            .collect()
    };
    let invited = state.accounts.invitations(&user, &name)?;
    Ok(Json(serde_json::json!({
        "name": name,
        "owner": owner,
        "members": as_json(members),
        "invited": as_json(invited),
    }))
    .into_response())
}

/// `DELETE /api/groups/{name}`: the owner dissolves the group, its files, its tables and
/// the grants nodes give it.
pub async fn dissolve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let gone = state.accounts.dissolve_group(&user, &name)?;
    purge(&state.storage, &state.mydb, &gone).await?;
    tracing::info!(user, group = name, id = gone.id, "group dissolved");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/groups/{name}/members` (`user`, `role`, default `ro`): invites a user (who
/// has no access until they accept) or changes a member's role. With `action=accept` or
/// `action=decline`, or when `user` is the caller and they are invited, the caller answers
/// their invitation.
pub async fn set_member(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    req: DaliRequest,
) -> Result<Response> {
    let me = caller.user_with(Scope::WriteStorage)?.to_string();
    let action = req
        .params
        .get("action")
        .map(|a| a.trim().to_ascii_lowercase());
    let member = req.params.get("user").map(|u| u.trim().to_string());
    match action.as_deref() {
        Some("accept") => return answer(&state, &me, &name, true),
        Some("decline") => return answer(&state, &me, &name, false),
        Some("invite" | "set") | None => {}
        Some(other) => {
            return Err(Error::Usage(format!(
                "action '{other}' is not one of invite, accept, decline"
            )));
        }
    }
    let member = member.ok_or_else(|| Error::Usage("user is missing".into()))?;
    if member == me && state.accounts.invitation(&name, &me)?.is_some() {
        return answer(&state, &me, &name, true);
    }
    let role = Role::parse(req.params.get("role").unwrap_or("ro"))?;
    let added = state.accounts.set_member(&me, &name, &member, role)?;
    tracing::info!(
        user = me,
        group = name,
        member,
        role = role.as_str(),
        status = added.status(),
        "group member set"
    );
    Ok(Json(serde_json::json!({
        "group": name, "user": member, "role": role.as_str(), "status": added.status()
    }))
    .into_response())
}

/// The caller accepts or declines their invitation to `group`.
fn answer(state: &AppState, me: &str, group: &str, accept: bool) -> Result<Response> {
    if accept {
        let role = state.accounts.accept_invitation(me, group)?;
        tracing::info!(
            user = me,
            group,
            role = role.as_str(),
            "invitation accepted"
        );
        Ok(Json(serde_json::json!({
            "group": group, "user": me, "role": role.as_str(), "status": "member"
        }))
        .into_response())
    } else {
        state.accounts.decline_invitation(me, group)?;
        tracing::info!(user = me, group, "invitation declined");
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// `POST /api/groups/{name}/accept`: the caller accepts their invitation.
pub async fn accept(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response> {
    let me = caller.user_with(Scope::WriteStorage)?.to_string();
    answer(&state, &me, &name, true)
}

/// `POST /api/groups/{name}/decline`: the caller declines their invitation.
pub async fn decline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Response> {
    let me = caller.user_with(Scope::WriteStorage)?.to_string();
    answer(&state, &me, &name, false)
}

/// `DELETE /api/groups/{name}/members/{user}`: removes a member or withdraws an
/// invitation; the caller leaves, or declines an invitation, with their own name.
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
