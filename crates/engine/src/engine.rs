//! An engine over a catalog store: every catalog is a table; ADQL is parsed, validated,
//! translated and run in a session from [`build_session`](crate::session::build_session).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionContext};
use meridian_adql::FunctionRegistry;
use meridian_adql::ast::ObjectName;
use meridian_adql::functions::Kind;
use meridian_catalog::Store;

use crate::hats_table::HatsTable;
use crate::session::{EngineConfig, build_session};
use crate::translate::{Tables, to_sql};
use crate::xmatch::{Mode, XMatchNode};
use crate::{Error, Result};

/// Query languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// ADQL 2.0 / 2.1.
    Adql,
    /// DataFusion's SQL (PostgreSQL-like) with the same functions.
    Sql,
}

/// What a query's scans read, against the totals: the figures `EXPLAIN` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// HATS partitions opened.
    pub partitions_read: usize,
    /// HATS partitions of the tables scanned.
    pub partitions_total: usize,
    /// Parquet row groups read after statistics pruning.
    pub row_groups_read: usize,
    /// Parquet row groups in the files opened.
    pub row_groups_total: usize,
}

impl std::fmt::Display for ScanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partitions read {}/{}, row groups read {}/{}",
            self.partitions_read,
            self.partitions_total,
            self.row_groups_read,
            self.row_groups_total
        )
    }
}

/// A table outside the catalogs, reached by a schema-qualified name (`TAP_SCHEMA.tables`,
/// `TAP_UPLOAD.mine`).
#[derive(Clone)]
struct ExtraTable {
    schema: String,
    name: String,
    provider: Arc<dyn datafusion::datasource::TableProvider>,
}

impl ExtraTable {
    /// The name it is registered under: one identifier holding `schema.name`.
    fn registered(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Registers the table in `ctx` twice: as the one identifier translated ADQL names,
    /// and as `schema.name` in lower case, which is how SQL (`LANG=SQL`, Data Lab's `sql=`)
    /// resolves an unquoted `schema.name`.
    fn register(&self, ctx: &SessionContext) -> Result<()> {
        use datafusion::catalog::MemorySchemaProvider;
        ctx.register_table(
            datafusion::common::TableReference::bare(self.registered()),
            self.provider.clone(),
        )?;
        let catalog_name = ctx
            .state()
            .config()
            .options()
            .catalog
            .default_catalog
            .clone();
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            return Ok(());
        };
        let schema = self.schema.to_ascii_lowercase();
        let provider = match catalog.schema(&schema) {
            Some(p) => p,
            None => {
                let p: Arc<dyn datafusion::catalog::SchemaProvider> =
                    Arc::new(MemorySchemaProvider::new());
                catalog.register_schema(&schema, p.clone())?;
                p
            }
        };
        let name = self.name.to_ascii_lowercase();
        if !provider.table_exist(&name) {
            provider.register_table(name, self.provider.clone())?;
        }
        Ok(())
    }
}

/// Catalog tables and a session to query them.
pub struct Engine {
    ctx: SessionContext,
    tables: Vec<(String, Arc<HatsTable>)>,
    extra: Vec<ExtraTable>,
    functions: FunctionRegistry,
    executor: Option<tokio::runtime::Handle>,
    remote: Option<Remote>,
}

/// Why a plan cannot run on a cluster (it reads a table only this process holds), if so.
pub type DistributionCheck =
    Arc<dyn Fn(&LogicalPlan) -> std::result::Result<(), String> + Send + Sync>;

/// A cluster that runs an engine's queries: plans are made here, against this process's
/// tables, and run in `ctx`, whose query planner sends them to the cluster.
#[derive(Clone)]
pub struct Remote {
    /// The cluster's session (see the `meridian-cluster` crate).
    pub ctx: SessionContext,
    /// Whether a plan can go to the cluster.
    pub check: DistributionCheck,
    /// Fail a query that cannot go, rather than run it in this process.
    pub required: bool,
    /// The scheduler, for messages.
    pub url: String,
    /// The cluster's executors, jobs and stages in the Prometheus text format, for
    /// `/metrics` (a blocking call to the scheduler).
    pub metrics: ClusterMetrics,
}

/// Renders a cluster's metrics (see [`Remote::metrics`]).
pub type ClusterMetrics = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("required", &self.required)
            .finish()
    }
}

/// The functions ADQL queries may call: ADQL's own and the UDFs Meridian provides.
pub fn functions() -> FunctionRegistry {
    let mut f = FunctionRegistry::adql();
    f.declare("ivo_healpix_index", 3, 3, Kind::Numeric)
        .declare("healpix_parent", 2, 2, Kind::Numeric)
        .declare("q3c_dist", 4, 4, Kind::Numeric)
        .declare("q3c_radial_query", 5, 5, Kind::Boolean)
        .declare("q3c_join", 5, 5, Kind::Boolean);
    f
}

impl Engine {
    /// Opens every catalog of `store` as a table.
    pub fn open(store: &Store, config: &EngineConfig) -> Result<Self> {
        let ctx = build_session(config)?;
        let mut tables = Vec::new();
        for name in store.list()? {
            let t = Arc::new(HatsTable::open(store, &name)?);
            ctx.register_table(
                datafusion::common::TableReference::bare(name.as_str()),
                t.clone(),
            )?;
            tables.push((name, t));
        }
        Ok(Self {
            ctx,
            tables,
            extra: Vec::new(),
            functions: functions(),
            executor: None,
            remote: None,
        })
    }

    /// Runs the queries it can on a cluster (see [`Remote`]).
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    /// The cluster queries run on, if any.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// A DataFrame of `plan` in the session it runs in: the cluster's when it can go
    /// there, else this process's (or an error, when the cluster is required).
    fn frame(&self, plan: LogicalPlan) -> Result<DataFrame> {
        let Some(r) = &self.remote else {
            return Ok(DataFrame::new(self.ctx.state(), plan));
        };
        match (r.check)(&plan) {
            Ok(()) => Ok(DataFrame::new(r.ctx.state(), plan)),
            Err(why) if r.required => Err(Error::Unsupported(format!(
                "this query cannot run on the cluster at {}: {why}",
                r.url
            ))),
            Err(why) => {
                tracing::info!(reason = %why, cluster = %r.url, "query runs in this process");
                Ok(DataFrame::new(self.ctx.state(), plan))
            }
        }
    }

    /// Runs query operators on `runtime` instead of the caller's. A server gives queries
    /// a runtime of their own so that CPU-bound operators never hold the threads that
    /// answer requests, notice time limits and stream results.
    pub fn with_executor(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.executor = Some(runtime);
        self
    }

    /// Adds a table reached as `schema.name` (ADQL matches both parts case-insensitively
    /// unless delimited).
    pub fn add_table(
        &mut self,
        schema: &str,
        name: &str,
        provider: Arc<dyn datafusion::datasource::TableProvider>,
    ) -> Result<()> {
        let t = ExtraTable {
            schema: schema.to_string(),
            name: name.to_string(),
            provider,
        };
        t.register(&self.ctx)?;
        self.extra.push(t);
        Ok(())
    }

    /// Adds `batch` as the in-memory table `schema.name`.
    pub fn add_batch_table(
        &mut self,
        schema: &str,
        name: &str,
        batch: arrow::record_batch::RecordBatch,
    ) -> Result<()> {
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        self.add_table(schema, name, Arc::new(table))
    }

    /// Adds `batch` as table `schema.name`, indexed by position for spatial queries (see
    /// [`crate::footprint_table`]): centre columns `ra`, `dec` and outline column `outline`.
    pub fn add_footprint_table(
        &mut self,
        schema: &str,
        name: &str,
        batch: arrow::record_batch::RecordBatch,
        (ra, dec, outline): (&str, &str, &str),
    ) -> Result<()> {
        let table = crate::footprint_table::FootprintTable::new(batch, ra, dec, outline)?;
        self.add_table(schema, name, Arc::new(table))
    }

    /// The tables added with [`Engine::add_table`]: (schema, name, provider).
    pub fn extra_tables(
        &self,
    ) -> impl Iterator<Item = (&str, &str, &Arc<dyn datafusion::datasource::TableProvider>)> {
        self.extra
            .iter()
            .map(|t| (t.schema.as_str(), t.name.as_str(), &t.provider))
    }

    /// An engine over the same catalogs, session settings, memory pool and executor, with
    /// `extra` tables of its own (one query's `TAP_UPLOAD` tables). The tables live in a
    /// catalog list of the new session only, so concurrent queries never see each
    /// other's.
    pub fn with_tables(
        &self,
        extra: Vec<(
            String,
            String,
            Arc<dyn datafusion::datasource::TableProvider>,
        )>,
    ) -> Result<Engine> {
        use datafusion::catalog::{
            CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
            MemorySchemaProvider,
        };
        let state = self.ctx.state();
        let options = state.config().options();
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema(
            &options.catalog.default_schema,
            Arc::new(MemorySchemaProvider::new()),
        )?;
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(options.catalog.default_catalog.clone(), catalog);
        let state =
            datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state)
                .with_catalog_list(catalogs)
                .build();
        let ctx = SessionContext::new_with_state(state);
        for (name, t) in &self.tables {
            ctx.register_table(
                datafusion::common::TableReference::bare(name.as_str()),
                t.clone(),
            )?;
        }
        for t in &self.extra {
            t.register(&ctx)?;
        }
        let mut engine = Engine {
            ctx,
            tables: self.tables.clone(),
            extra: self.extra.clone(),
            functions: self.functions.clone(),
            executor: self.executor.clone(),
            remote: self.remote.clone(),
        };
        for (schema, name, provider) in extra {
            engine.add_table(&schema, &name, provider)?;
        }
        Ok(engine)
    }

    /// The runtime query operators run on, if not the caller's.
    pub fn executor(&self) -> Option<&tokio::runtime::Handle> {
        self.executor.as_ref()
    }

    /// The session (for registering more tables).
    pub fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// A table over one Parquet file (a user's table), read as catalogs are: streamed,
    /// with row-group pruning by its statistics.
    pub async fn parquet_table(
        &self,
        path: &std::path::Path,
    ) -> Result<Arc<dyn datafusion::datasource::TableProvider>> {
        self.parquet_table_sorted(path, None).await
    }

    /// [`Self::parquet_table`] over a file whose rows are in ascending order of
    /// `sorted_by`: plans that read them in that order need no sort.
    pub async fn parquet_table_sorted(
        &self,
        path: &std::path::Path,
        sorted_by: Option<&str>,
    ) -> Result<Arc<dyn datafusion::datasource::TableProvider>> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        let url = ListingTableUrl::parse(path.to_string_lossy())?;
        let mut options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        if let Some(c) = sorted_by {
            options = options
                .with_file_sort_order(vec![vec![datafusion::prelude::col(c).sort(true, false)]]);
        }
        let state = self.ctx.state();
        let schema = options.infer_schema(&state, &url).await?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Arc::new(ListingTable::try_new(config)?))
    }

    /// The catalog tables, by name.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &Arc<HatsTable>)> {
        self.tables.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// A catalog table by exact name.
    pub fn table(&self, name: &str) -> Option<&Arc<HatsTable>> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Parses, validates and translates ADQL to the SQL the session runs.
    pub fn translate(&self, adql: &str) -> Result<String> {
        let q = meridian_adql::parse(adql, &self.functions)?;
        to_sql(&q, self)
    }

    /// Plans a query; run it with `DataFrame::execute_stream`, or better make its physical
    /// plan with [`Engine::physical_plan`].
    ///
    /// Only queries are planned (see [`crate::guard`]): DDL, DML, `COPY` and `SET` are
    /// refused whatever the language. Parsing and planning run on a thread with a large
    /// stack, after the text's size and depth are checked.
    pub async fn query(&self, text: &str, lang: Lang) -> Result<DataFrame> {
        crate::guard::check_length(text)?;
        let plan = crate::guard::on_planning_stack(|| {
            futures::executor::block_on(self.logical_plan(text, lang))
        })?;
        self.frame(plan)
    }

    async fn logical_plan(
        &self,
        text: &str,
        lang: Lang,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        let sql = match lang {
            Lang::Adql => self.translate(text)?,
            Lang::Sql => text.to_string(),
        };
        crate::guard::check_sql_text(&sql)?;
        let state = self.ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let mut statement = state.sql_to_statement(&sql, &dialect)?;
        crate::guard::check_statement(&statement)?;
        crate::guard::rebalance(&mut statement);
        let plan = state.statement_to_plan(statement).await?;
        crate::guard::check_plan(&plan)?;
        Ok(plan)
    }

    /// The analysed and optimized logical plan of a query (checked as [`Engine::query`]
    /// checks it), for a query run again and again while its tables' rows change: its
    /// physical plan is made for each run by [`Engine::physical_plan_of`], so parsing,
    /// translation and logical optimization are paid once. Runs in this process, also on an
    /// engine with a cluster.
    pub async fn optimized_plan(&self, text: &str, lang: Lang) -> Result<LogicalPlan> {
        crate::guard::check_length(text)?;
        crate::guard::on_planning_stack(|| {
            let plan = futures::executor::block_on(self.logical_plan(text, lang))?;
            Ok(self.ctx.state().optimize(&plan)?)
        })
    }

    /// The physical plan of `plan`, a plan from [`Engine::optimized_plan`] (its tables may
    /// be others of the same schemas: their scans and statistics are taken now).
    pub async fn physical_plan_of(
        &self,
        plan: &LogicalPlan,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        crate::guard::on_planning_stack(|| {
            let state = self.ctx.state();
            futures::executor::block_on(state.query_planner().create_physical_plan(plan, &state))
                .map_err(Error::from)
        })
    }

    /// The optimized physical plan of `df` (a query of this engine), made on the planning
    /// thread as [`Engine::query`] is: the optimizer recurses over the query's expressions.
    pub async fn physical_plan(
        &self,
        df: DataFrame,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        crate::guard::on_planning_stack(move || {
            futures::executor::block_on(df.create_physical_plan()).map_err(Error::from)
        })
    }
}

/// A best-match (or all-pairs) cross-match of two catalogs, as `meridian xmatch` runs it.
#[derive(Debug, Clone)]
pub struct XMatchSpec {
    /// Catalog whose rows are matched (one output row per matched row in best-match mode).
    pub left: String,
    /// Catalog searched for partners.
    pub right: String,
    /// Match radius, degrees.
    pub radius_deg: f64,
    /// Identifier columns; by default each catalog's main identifier ([`id_column`]).
    pub left_id: Option<String>,
    /// See `left_id`.
    pub right_id: Option<String>,
    /// Nearest partner only, or every pair.
    pub mode: Mode,
}

/// A catalog's identifier column: the one whose UCD is `meta.id;meta.main`, else a column
/// with a usual identifier name, else the position index `_healpix_29`.
pub fn id_column(schema: &arrow::datatypes::Schema) -> Option<String> {
    let ucd = schema.fields().iter().find(|f| {
        f.metadata()
            .get("ucd")
            .is_some_and(|u| u.to_ascii_lowercase().contains("meta.id;meta.main"))
    });
    const NAMES: [&str; 8] = [
        "source_id",
        "objectid",
        "object_id",
        "objid",
        "id",
        "hip",
        "tyc",
        "_healpix_29",
    ];
    ucd.or_else(|| {
        NAMES.iter().find_map(|n| {
            schema
                .fields()
                .iter()
                .find(|f| f.name().eq_ignore_ascii_case(n))
        })
    })
    .map(|f| f.name().clone())
}

impl Engine {
    /// Plans a cross-match of two catalogs: rows (id1, ra1, dec1, id2, ra2, dec2,
    /// distance_arcsec).
    pub async fn xmatch(&self, spec: &XMatchSpec) -> Result<DataFrame> {
        use datafusion::logical_expr::LogicalPlanBuilder;
        let side = |name: &str, id: &Option<String>, alias: &str| -> Result<_> {
            let table = self.table(name).ok_or_else(|| {
                Error::Invalid(format!(
                    "no catalog named '{name}'{}",
                    crate::translate::suggest(name, self.tables.iter().map(|(n, _)| n.as_str()))
                ))
            })?;
            let schema = datafusion::datasource::TableProvider::schema(table.as_ref());
            let id = match id {
                Some(id) => id.clone(),
                None => id_column(&schema).ok_or_else(|| {
                    Error::Invalid(format!(
                        "catalog '{name}' has no identifier column; name one"
                    ))
                })?,
            };
            if schema.field_with_name(&id).is_err() {
                return Err(Error::Invalid(format!(
                    "catalog '{name}' has no column '{id}'{}",
                    crate::translate::suggest(
                        &id,
                        schema.fields().iter().map(|f| f.name().as_str())
                    )
                )));
            }
            let catalog = table.catalog();
            let (ra, dec) = (catalog.ra_column(), catalog.dec_column());
            Ok((
                alias.to_string(),
                name.to_string(),
                id,
                ra.to_string(),
                dec.to_string(),
            ))
        };
        let l = side(&spec.left, &spec.left_id, "l")?;
        let r = side(&spec.right, &spec.right_id, "r")?;
        let mut plans = Vec::new();
        for (alias, name, id, ra, dec) in [&l, &r] {
            let df = self.ctx.table(name.as_str()).await?;
            let mut cols = vec![id.clone()];
            for c in [ra, dec] {
                if !cols.contains(c) {
                    cols.push(c.clone());
                }
            }
            let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
            let plan = df.select_columns(&cols)?.into_unoptimized_plan();
            plans.push(
                LogicalPlanBuilder::from(plan)
                    .alias(alias.as_str())?
                    .build()?,
            );
        }
        // Exact (case-preserving) names: `col("l.objectId")` would parse and fold the case.
        let qcol = |s: &(String, String, String, String, String), c: &str| {
            datafusion::logical_expr::Expr::Column(datafusion::common::Column::new(
                Some(s.0.as_str()),
                c,
            ))
        };
        let right_plan = plans.pop().expect("two plans");
        let left_plan = plans.pop().expect("two plans");
        let node = XMatchNode::try_new(
            left_plan,
            right_plan,
            [qcol(&l, &l.3), qcol(&l, &l.4)],
            [qcol(&r, &r.3), qcol(&r, &r.4)],
            spec.radius_deg,
            spec.mode,
        )?
        .with_distance()?;
        // The node's own distance, from the chord it compared with the radius.
        let distance = datafusion::logical_expr::Expr::Column(datafusion::common::Column::new(
            None::<&str>,
            crate::xmatch::DISTANCE_COLUMN,
        ));
        let plan = LogicalPlanBuilder::from(node.into_plan())
            .project(vec![
                qcol(&l, &l.2).alias("id1"),
                qcol(&l, &l.3).alias("ra1"),
                qcol(&l, &l.4).alias("dec1"),
                qcol(&r, &r.2).alias("id2"),
                qcol(&r, &r.3).alias("ra2"),
                qcol(&r, &r.4).alias("dec2"),
                (distance * datafusion::logical_expr::lit(3600.0)).alias("distance_arcsec"),
            ])?
            .build()?;
        self.frame(plan)
    }
}

impl Engine {
    /// Runs the query under EXPLAIN ANALYZE and reports what its scans read.
    pub async fn scan_report(&self, text: &str, lang: Lang) -> Result<ScanReport> {
        let sql = match lang {
            Lang::Adql => self.translate(text)?,
            Lang::Sql => text.to_string(),
        };
        for (_, t) in &self.tables {
            t.reset_pruning();
        }
        let batches = self
            .query(&format!("EXPLAIN ANALYZE {sql}"), Lang::Sql)
            .await?
            .collect()
            .await?;
        let mut report = ScanReport::default();
        for b in &batches {
            let plans = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8)
                .map_err(datafusion::error::DataFusionError::from)?;
            let plans = arrow::array::AsArray::as_string::<i32>(&plans);
            for text in plans.iter().flatten() {
                // "row_groups_pruned_statistics=22 total → 1 matched", once per scan.
                for part in text.split("row_groups_pruned_statistics=").skip(1) {
                    let total = part
                        .split(" total")
                        .next()
                        .and_then(|t| t.trim().parse::<usize>().ok());
                    let matched = part
                        .split("→ ")
                        .nth(1)
                        .and_then(|m| m.split(' ').next())
                        .and_then(|m| m.parse::<usize>().ok());
                    report.row_groups_total += total.unwrap_or(0);
                    report.row_groups_read += matched.unwrap_or(0);
                }
            }
        }
        for (_, t) in &self.tables {
            let p = t.last_pruning();
            report.partitions_read += p.partitions_read;
            report.partitions_total += p.partitions_total;
        }
        Ok(report)
    }
}

impl Tables for Engine {
    fn resolve(&self, name: &ObjectName) -> Option<(String, SchemaRef)> {
        let last = name.last();
        let matches = |ident: &meridian_adql::ast::Ident, s: &str| {
            ident.value == s || (!ident.quoted && ident.value.eq_ignore_ascii_case(s))
        };
        if name.0.len() >= 2 {
            let schema = &name.0[name.0.len() - 2];
            if let Some(t) = self
                .extra
                .iter()
                .find(|t| matches(schema, &t.schema) && matches(last, &t.name))
            {
                return Some((t.registered(), t.provider.schema()));
            }
        }
        // A qualifying schema is accepted as written; catalogs live in one namespace.
        self.tables
            .iter()
            .find(|(n, _)| *n == last.value)
            .or_else(|| {
                (!last.quoted)
                    .then(|| {
                        self.tables
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(&last.value))
                    })
                    .flatten()
            })
            .map(|(n, t)| {
                (
                    n.clone(),
                    datafusion::datasource::TableProvider::schema(t.as_ref()),
                )
            })
    }

    fn names(&self) -> Vec<String> {
        self.tables
            .iter()
            .map(|(n, _)| n.clone())
            .chain(self.extra.iter().map(ExtraTable::registered))
            .collect()
    }
}
