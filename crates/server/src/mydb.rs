//! MyDB in queries: a user's tables are `mydb.<name>` in ADQL and SQL (Data Lab's
//! `mydb://<name>` is read the same way), and a query's result can be kept as a MyDB table.

use std::sync::Arc;

use meridian_engine::Engine;
use meridian_services::mydb::MyDb;

use crate::error::{Error, Result};
use crate::result::write_stream;
use crate::tap::{QuerySpec, plan};

/// The schema user tables are queried in.
pub const SCHEMA: &str = "mydb";

/// Data Lab writes MyDB tables as `mydb://name` inside query text; that is `mydb.name`.
/// (A string literal containing `mydb://` would be rewritten too.)
pub fn rewrite(query: &str) -> String {
    query.replace("mydb://", "mydb.")
}

/// `engine` with the MyDB tables of `user` that the query names, as `mydb.<name>`, and
/// those of the user's `groups`, as `<group>.<name>` (`engine` itself, at no cost, when it
/// names none).
pub async fn engine_for(
    engine: &Arc<Engine>,
    mydb: &MyDb,
    user: Option<&str>,
    groups: &[String],
    query: &str,
) -> Result<Arc<Engine>> {
    let Some(user) = user else {
        return Ok(engine.clone());
    };
    let text = query.to_ascii_lowercase();
    let mut spaces = Vec::new();
    if text.contains(SCHEMA) {
        spaces.push((SCHEMA.to_string(), user.to_string()));
    }
    for g in groups {
        let schema = g.to_ascii_lowercase();
        if text.contains(&format!("{schema}.")) {
            spaces.push((schema, g.clone()));
        }
    }
    let mut tables = Vec::new();
    for (schema, space) in spaces {
        // Only tables the query names: each one costs a read of its Parquet footer.
        for t in mydb
            .list(&space)?
            .into_iter()
            .filter(|t| text.contains(&t.name))
        {
            let provider = match current_index(mydb, &space, &t.name) {
                Some(catalog) => Arc::new(meridian_engine::hats_table::HatsTable::new(catalog))
                    as Arc<dyn datafusion::datasource::TableProvider>,
                None => engine.parquet_table(&mydb.path(&space, &t.name)?).await?,
            };
            tables.push((schema.clone(), t.name, provider));
        }
    }
    if tables.is_empty() {
        return Ok(engine.clone());
    }
    Ok(Arc::new(engine.with_tables(tables)?))
}

/// The MyDB space and table a name written by `user` means: `table` is theirs,
/// `group.table` a group's, where their role must allow writing.
pub fn writable_space(state: &crate::AppState, user: &str, name: &str) -> Result<(String, String)> {
    let Some((group, table)) = name.split_once('.') else {
        return Ok((user.to_string(), name.to_string()));
    };
    match state.accounts.role(group, user)? {
        Some(role) if role.writes() => Ok((group.to_string(), table.to_string())),
        Some(_) => Err(Error::Services(meridian_services::Error::Forbidden(
            format!("your role in '{group}' is read-only"),
        ))),
        None => Err(Error::NotFound(format!("no group '{group}' of yours"))),
    }
}

/// The spatial index of table `name` of `space`, when there is one at least as new as the
/// table (an index being rebuilt after a change is not used until it is done).
fn current_index(mydb: &MyDb, space: &str, name: &str) -> Option<meridian_catalog::Catalog> {
    let table = mydb.path(space, name).ok()?;
    let index = mydb.index_dir(space).ok()?.join(name);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&index)? < modified(&table)? {
        return None;
    }
    meridian_catalog::Catalog::open(&index).ok()
}

/// Brings the spatial index of table `name` of `space` in line with the table: rebuilt
/// (HATS, partitioned by HEALPix, with a margin) when the table has positions (`ra`/`dec`
/// or the other names ingest recognises), removed when the table is gone or has none.
/// Failures are logged: queries then read the table's file, as they do without an index.
pub async fn reindex(mydb: &Arc<MyDb>, space: &str, name: &str) {
    let (mydb, space, name) = (mydb.clone(), space.to_string(), name.to_string());
    let done = tokio::task::spawn_blocking(move || -> std::result::Result<Option<u64>, String> {
        let store =
            meridian_catalog::Store::open(mydb.index_dir(&space).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let table = mydb.path(&space, &name).map_err(|e| e.to_string())?;
        if store.location(&name).is_ok() {
            store.remove(&name).map_err(|e| e.to_string())?;
        }
        if !table.is_file() {
            return Ok(None);
        }
        let opts = meridian_catalog::IngestOptions {
            partition_rows: 500_000,
            memory_budget_bytes: 256 << 20,
            threads: 1,
            ..Default::default()
        };
        match meridian_catalog::ingest::ingest(&store, &name, &[table], &opts, &|_| {}) {
            Ok(report) => Ok(Some(report.rows)),
            // No position columns: nothing to index.
            Err(e) if e.to_string().contains("missing position column") => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match done {
        Ok(Ok(Some(rows))) => tracing::info!(rows, "MyDB table indexed (HATS)"),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "MyDB table not indexed"),
        Err(e) => tracing::warn!(error = %e, "MyDB index task failed"),
    }
}

/// Where a query result is kept: `user`'s table, or a group's (`<group>.<table>`).
pub struct Destination<'a> {
    /// The user running the query.
    pub user: &'a str,
    /// Their groups (whose tables the query may read).
    pub groups: &'a [String],
    /// The MyDB space written: the user, or a group they write in.
    pub space: &'a str,
    /// The table.
    pub name: &'a str,
}

/// Runs `spec` and keeps its result as table `to.name` of `to.space` (VO-Parquet, so units
/// and UCDs stay), replacing an existing one only when `replace`. Returns the rows written.
pub async fn save(
    engine: &Arc<Engine>,
    mydb: &Arc<MyDb>,
    spec: &QuerySpec,
    to: &Destination<'_>,
    replace: bool,
) -> Result<u64> {
    let (user, space, name) = (to.user, to.space, to.name);
    if mydb.exists(space, name)? && !replace {
        return Err(Error::Services(meridian_services::Error::Conflict(
            format!("MyDB table '{name}' exists; drop it first or ask to replace it (drop=True)"),
        )));
    }
    let engine = engine_for(engine, mydb, Some(user), to.groups, &spec.query).await?;
    let (schema, stream) = plan(&engine, spec).await?;
    let staged = mydb.staging_path(space, name)?;
    let written = async {
        let format = crate::tap::format(Some("parquet"))?;
        let mut writer =
            meridian_formats::write::ResultWriter::create(format.output, &staged, &schema)?;
        writer.set_maxrec(spec.maxrec);
        write_stream(writer, stream).await
    }
    .await;
    match written {
        Ok(rows) => {
            mydb.commit(space, name, &staged, replace)?;
            tracing::info!(user, space, table = name, rows, "MyDB table written");
            reindex(mydb, space, name).await;
            Ok(rows)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            Err(e)
        }
    }
}
