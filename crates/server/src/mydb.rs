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

/// `engine` with the MyDB tables of `user` that the query names, as `mydb.<name>`
/// (`engine` itself, at no cost, when it names none).
pub async fn engine_for(
    engine: &Arc<Engine>,
    mydb: &MyDb,
    user: Option<&str>,
    query: &str,
) -> Result<Arc<Engine>> {
    let Some(user) = user else {
        return Ok(engine.clone());
    };
    let text = query.to_ascii_lowercase();
    if !text.contains(SCHEMA) {
        return Ok(engine.clone());
    }
    let mut tables = Vec::new();
    // Only tables the query names: each one costs a read of its Parquet footer.
    for t in mydb
        .list(user)?
        .into_iter()
        .filter(|t| text.contains(&t.name))
    {
        let provider = engine.parquet_table(&mydb.path(user, &t.name)?).await?;
        tables.push((SCHEMA.to_string(), t.name, provider));
    }
    if tables.is_empty() {
        return Ok(engine.clone());
    }
    Ok(Arc::new(engine.with_tables(tables)?))
}

/// Runs `spec` and keeps its result as `user`'s table `name` (VO-Parquet, so units and UCDs
/// stay), replacing an existing one only when `replace`. Returns the rows written.
pub async fn save(
    engine: &Arc<Engine>,
    mydb: &MyDb,
    user: &str,
    spec: &QuerySpec,
    name: &str,
    replace: bool,
) -> Result<u64> {
    if mydb.exists(user, name)? && !replace {
        return Err(Error::Services(meridian_services::Error::Conflict(
            format!("MyDB table '{name}' exists; drop it first or ask to replace it (drop=True)"),
        )));
    }
    let engine = engine_for(engine, mydb, Some(user), &spec.query).await?;
    let (schema, stream) = plan(&engine, spec).await?;
    let staged = mydb.staging_path(user, name)?;
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
            mydb.commit(user, name, &staged, replace)?;
            tracing::info!(user, table = name, rows, "MyDB table written");
            Ok(rows)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            Err(e)
        }
    }
}
