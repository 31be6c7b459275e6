//! Filters run against each batch of incoming alerts, as ADQL queries.
//!
//! A batch is offered to a filter as tables of the schema `alert`, every one with the
//! column `alertId` naming the alert a row came with:
//!
//! | Survey | table | rows |
//! |---|---|---|
//! | Rubin | `alert.diasource` | the alert's new `diaSource` (one per alert; `alertId` is the alert's `alertId`, or its `diaSourceId` in schemas that have no `alertId`) |
//! | Rubin | `alert.diaobject` | its `diaObject` |
//! | Rubin | `alert.prv_diasource` | its earlier sources (`prvDiaSources`) |
//! | Rubin | `alert.prv_forced` | its forced photometry (`prvDiaForcedSources`) |
//! | ZTF | `alert.candidate` | the `candidate`, with `objectId` (`alertId` is its `candid`) |
//! | ZTF | `alert.prv_candidate` | the earlier detections and upper limits (`prv_candidates`) |
//!
//! Besides these a filter reads every served catalog (a cross-match within a radius is
//! `JOIN catalog AS c ON 1 = CONTAINS(POINT(a.ra, a.dec), CIRCLE(c.ra, c.dec, r))`) and
//! its owner's MyDB tables as `mydb.<name>` (a watchlist). Its result must have the column
//! `alertId`: each alert among its rows is a match, and its rows go to the filter's
//! outputs. A filter reads Rubin alerts unless it names a ZTF table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::LogicalPlan;
use meridian_engine::{Engine, Lang};
use meridian_services::mydb::MyDb;

use crate::dia::{self, Kind};
use crate::filters::{Filter, Match};
use crate::{Error, Result};

/// The schema alert tables are queried in.
pub const SCHEMA: &str = "alert";

/// The column naming an alert, in every alert table and in a filter's result.
pub const KEY: &str = "alertId";

/// Which survey's alerts a filter reads: ZTF's when it names a ZTF table.
pub fn kind_of(query: &str) -> Kind {
    let q = query.to_ascii_lowercase();
    let ztf = ["candidate", "prv_candidate"]
        .iter()
        .any(|t| q.contains(&format!("{SCHEMA}.{t}")));
    if ztf { Kind::Ztf } else { Kind::Rubin }
}

/// `batch` with `ids` as its first column, `alertId`.
fn with_key(batch: &RecordBatch, ids: ArrayRef) -> Result<RecordBatch> {
    let ids = arrow::compute::cast(&ids, &DataType::Int64)?;
    let mut fields: Vec<Arc<Field>> = vec![Arc::new(Field::new(KEY, DataType::Int64, true))];
    let mut columns = vec![ids];
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if !f.name().eq_ignore_ascii_case(KEY) {
            fields.push(f.clone());
            columns.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The rows of a record field, each with its alert's id (alerts where it is null left
/// out).
fn records_with(alerts: &RecordBatch, field: &str, ids: &ArrayRef) -> Result<RecordBatch> {
    let s = dia::as_struct(dia::column(alerts, field)?, field)?;
    let rows = with_key(&RecordBatch::from(dia::without_nulls(s)), ids.clone())?;
    match s.nulls() {
        Some(n) => Ok(arrow::compute::filter_record_batch(
            &rows,
            &arrow::array::BooleanArray::new(n.inner().clone(), None),
        )?),
        None => Ok(rows),
    }
}

/// The elements of a list field, each with its alert's id.
fn elements_with(alerts: &RecordBatch, field: &str, ids: &ArrayRef) -> Result<RecordBatch> {
    let (rows, owner) = dia::elements(alerts, field)?;
    let ids = arrow::compute::take(ids.as_ref(), &owner, None)?;
    with_key(&rows, ids)
}

/// The tables of `alerts` (of one schema) a filter reads.
pub fn alert_tables(alerts: &RecordBatch) -> Result<(Kind, Vec<(&'static str, RecordBatch)>)> {
    let kind = Kind::detect(&alerts.schema())?;
    let tables = match kind {
        Kind::Rubin => {
            // Schemas before 9.0 have `alertId`; later ones name an alert by its source.
            let ids = match alerts.column_by_name(KEY) {
                Some(c) => c.clone(),
                None => dia::column(alerts, "diaSourceId")?.clone(),
            };
            vec![
                ("diasource", records_with(alerts, "diaSource", &ids)?),
                ("diaobject", records_with(alerts, "diaObject", &ids)?),
                (
                    "prv_diasource",
                    elements_with(alerts, "prvDiaSources", &ids)?,
                ),
                (
                    "prv_forced",
                    elements_with(alerts, "prvDiaForcedSources", &ids)?,
                ),
            ]
        }
        Kind::Ztf => {
            let candidate = dia::as_struct(dia::column(alerts, "candidate")?, "candidate")?;
            let ids = candidate
                .column_by_name("candid")
                .ok_or_else(|| Error::Shape("ZTF 'candidate' has no 'candid'".into()))?
                .clone();
            let object = dia::column(alerts, "objectId")?.clone();
            let add_object = |b: RecordBatch, object: ArrayRef| -> Result<RecordBatch> {
                let mut fields: Vec<Arc<Field>> = b.schema().fields().iter().cloned().collect();
                let mut columns = b.columns().to_vec();
                fields.insert(
                    1,
                    Arc::new(Field::new("objectId", object.data_type().clone(), true)),
                );
                columns.insert(1, object);
                Ok(RecordBatch::try_new(
                    Arc::new(Schema::new(fields)),
                    columns,
                )?)
            };
            let cand = records_with(alerts, "candidate", &ids)?;
            let cand = add_object(cand, object.clone())?;
            let (prv, owner) = dia::elements(alerts, "prv_candidates")?;
            let prv_ids = arrow::compute::take(ids.as_ref(), &owner, None)?;
            let prv_objects = arrow::compute::take(object.as_ref(), &owner, None)?;
            let prv = add_object(with_key(&prv, prv_ids)?, prv_objects)?;
            vec![("candidate", cand), ("prv_candidate", prv)]
        }
    };
    Ok((kind, tables))
}

/// Empty alert tables of the shapes the store's alert catalogs hold (for checking a filter
/// before alerts arrive in the process that checks it), when the store has them.
fn stored_shapes(engine: &Engine, kind: Kind) -> Vec<(&'static str, SchemaRef)> {
    let shape = |catalog: &str| {
        engine.table(catalog).map(|t| {
            let schema = TableProvider::schema(t.as_ref());
            let fields: Vec<Arc<Field>> =
                std::iter::once(Arc::new(Field::new(KEY, DataType::Int64, true)))
                    .chain(
                        schema
                            .fields()
                            .iter()
                            .filter(|f| !f.name().eq_ignore_ascii_case(KEY))
                            .cloned(),
                    )
                    .collect();
            Arc::new(Schema::new(fields))
        })
    };
    let wanted: &[(&'static str, &str)] = match kind {
        Kind::Rubin => &[
            ("diasource", "dia_source"),
            ("diaobject", "dia_object"),
            ("prv_diasource", "dia_source"),
            ("prv_forced", "dia_forced_source"),
        ],
        Kind::Ztf => &[
            ("candidate", "ztf_candidate"),
            ("prv_candidate", "ztf_candidate"),
        ],
    };
    wanted
        .iter()
        .filter_map(|(t, c)| shape(c).map(|s| (*t, s)))
        .collect()
}

/// Runs filters over batches of alerts, in a runtime of its own.
pub struct Evaluator {
    engine: Arc<Engine>,
    mydb: Option<Arc<MyDb>>,
    /// Longest run of one filter over one batch: past it the filter is stopped (and
    /// paused), so that one costly filter cannot hold the stream back.
    time_limit: std::time::Duration,
    /// The runtime filters' operators run on, when not the caller's: a time limit is
    /// noticed by a thread that no operator holds.
    executor: Option<tokio::runtime::Handle>,
    /// Filters' plans over the alert tables of the shapes seen lately.
    prepared: Mutex<Vec<Arc<Prepared>>>,
}

/// Shapes of alert tables whose filters' plans are kept (a stream has one or two).
const PREPARED_SHAPES: usize = 4;

/// Filters planned once over alert tables of one shape, and bound to each batch's tables
/// before they run: parsing, translating and optimizing 100 filters cost more than running
/// them over a batch of thousands of alerts.
struct Prepared {
    kind: Kind,
    /// The alert tables' names and schemas.
    shapes: Vec<(&'static str, SchemaRef)>,
    /// The empty tables of those schemas the plans were made over.
    placeholders: Vec<Arc<dyn TableProvider>>,
    /// A session with the placeholders as the alert tables.
    engine: Arc<Engine>,
    /// Per filter: the query planned, and its optimized plan.
    plans: Mutex<HashMap<i64, (String, LogicalPlan)>>,
}

impl Prepared {
    /// `f`'s plan over the placeholders: kept, or made now (and kept).
    async fn plan(&self, f: &Filter) -> Result<LogicalPlan> {
        if let Some((q, p)) = self.plans.lock().expect("filter plans").get(&f.id)
            && *q == f.query
        {
            return Ok(p.clone());
        }
        let plan = self.engine.optimized_plan(&f.query, Lang::Adql).await?;
        self.plans
            .lock()
            .expect("filter plans")
            .insert(f.id, (f.query.clone(), plan.clone()));
        Ok(plan)
    }

    /// `plan` with the batch's `tables` (in the order of `shapes`) in place of the
    /// placeholders, also within subqueries.
    fn bind(
        &self,
        plan: LogicalPlan,
        tables: &[(&'static str, Arc<dyn TableProvider>)],
    ) -> Result<LogicalPlan> {
        use datafusion::common::tree_node::Transformed;
        use datafusion::datasource::{provider_as_source, source_as_provider};
        let bound = plan
            .transform_up_with_subqueries(|node| {
                let LogicalPlan::TableScan(scan) = &node else {
                    return Ok(Transformed::no(node));
                };
                let Ok(provider) = source_as_provider(&scan.source) else {
                    return Ok(Transformed::no(node));
                };
                let Some(i) = self
                    .placeholders
                    .iter()
                    .position(|p| Arc::ptr_eq(p, &provider))
                else {
                    return Ok(Transformed::no(node));
                };
                let mut scan = scan.clone();
                scan.source = provider_as_source(tables[i].1.clone());
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            })
            .map_err(meridian_engine::Error::from)?;
        Ok(bound.data)
    }
}

/// A filter's longest run over one batch unless configured otherwise.
pub const FILTER_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What one filter made of a batch.
#[derive(Debug)]
pub struct Outcome {
    /// The filter.
    pub filter: i64,
    /// Its result rows, or why it failed (the filter is then paused).
    pub rows: Result<Vec<RecordBatch>>,
}

impl Evaluator {
    /// Filters over `engine`'s catalogs, with owners' MyDB tables from `mydb`.
    pub fn new(engine: Arc<Engine>, mydb: Option<Arc<MyDb>>) -> Self {
        Self {
            engine,
            mydb,
            time_limit: FILTER_TIME_LIMIT,
            executor: None,
            prepared: Mutex::new(Vec::new()),
        }
    }

    /// Runs filters' operators on `runtime`: their time limit is then kept even when they
    /// compute without pause on every thread of the caller's runtime.
    pub fn with_executor(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.executor = Some(runtime);
        self
    }

    /// `self.engine` with `extra` tables, its operators on the filters' executor.
    fn engine_with(&self, extra: Vec<(String, String, Arc<dyn TableProvider>)>) -> Result<Engine> {
        let engine = self.engine.with_tables(extra)?;
        Ok(match &self.executor {
            Some(rt) => engine.with_executor(rt.clone()),
            None => engine,
        })
    }

    /// The engine with `tables` as `alert.<name>` and the MyDB tables of `owner` that
    /// `query` names as `mydb.<name>`.
    async fn engine_for(
        &self,
        owner: &str,
        query: &str,
        tables: Vec<(&'static str, Arc<dyn TableProvider>)>,
    ) -> Result<Engine> {
        let mut extra: Vec<(String, String, Arc<dyn TableProvider>)> = tables
            .into_iter()
            .map(|(n, t)| (SCHEMA.to_string(), n.to_string(), t))
            .collect();
        let text = query.to_ascii_lowercase();
        if let Some(mydb) = self.mydb.as_ref().filter(|_| reads_mydb(query)) {
            for t in mydb
                .list(owner)
                .map_err(|e| Error::Invalid(e.to_string()))?
            {
                if text.contains(&format!("mydb.{}", t.name)) {
                    let path = mydb
                        .path(owner, &t.name)
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    extra.push((
                        "mydb".into(),
                        t.name.clone(),
                        self.engine.parquet_table(&path).await?,
                    ));
                }
            }
        }
        self.engine_with(extra)
    }

    /// Checks a filter before it is stored: its ADQL must parse and plan against the alert
    /// tables, and its result must have `alertId`. Before any alerts of its survey are
    /// stored only the syntax can be checked.
    pub async fn validate(&self, owner: &str, query: &str) -> Result<()> {
        let kind = kind_of(query);
        let shapes = stored_shapes(&self.engine, kind);
        if shapes.is_empty() {
            meridian_adql::parse(query, &meridian_engine::functions())
                .map_err(|e| Error::Invalid(format!("the filter's ADQL: {e}")))?;
            return Ok(());
        }
        let tables = shapes
            .into_iter()
            .map(|(n, s)| Ok((n, memory_table(s, vec![])?)))
            .collect::<Result<Vec<_>>>()?;
        let engine = self.engine_for(owner, query, tables).await?;
        let df = engine
            .query(query, Lang::Adql)
            .await
            .map_err(|e| Error::Invalid(format!("the filter's ADQL: {e}")))?;
        let schema = df.schema();
        if !schema
            .fields()
            .iter()
            .any(|f| f.name().eq_ignore_ascii_case(KEY))
        {
            return Err(Error::Invalid(format!(
                "the filter's result must have the column {KEY} (each alert among its rows is \
                 a match); select it, for example SELECT a.{KEY}, ... FROM {SCHEMA}.diasource AS a"
            )));
        }
        Ok(())
    }

    /// Runs each of `filters` over `alerts` (batches of any schemas and surveys): per
    /// filter, its rows over all batches of its survey, or its error.
    pub async fn run(&self, filters: &[Filter], alerts: &[RecordBatch]) -> Result<Vec<Outcome>> {
        // One set of tables per schema.
        let mut groups: Vec<(SchemaRef, Vec<RecordBatch>)> = Vec::new();
        for a in alerts.iter().filter(|a| a.num_rows() > 0) {
            match groups.iter_mut().find(|(s, _)| *s == a.schema()) {
                Some((_, v)) => v.push(a.clone()),
                None => groups.push((a.schema(), vec![a.clone()])),
            }
        }
        let mut sets = Vec::new();
        for (schema, batches) in groups {
            let one = arrow::compute::concat_batches(&schema, &batches)?;
            let (kind, tables) = alert_tables(&one)?;
            let providers = tables
                .iter()
                .map(|(n, b)| Ok((*n, memory_table(b.schema(), vec![b.clone()])?)))
                .collect::<Result<Vec<_>>>()?;
            let prepared = self.prepared_for(kind, &tables)?;
            sets.push((kind, prepared, Arc::new(providers)));
        }
        self.forget_all_but(filters);
        // Filters that read no MyDB table run on their plans kept over the alert tables'
        // shape (see `Prepared`), bound to this batch's tables, as tasks of the runtime:
        // on all its threads at once.
        let mut pending = Vec::with_capacity(filters.len());
        for f in filters {
            let kind = kind_of(&f.query);
            if reads_mydb(&f.query) {
                pending.push((f, None));
                continue;
            }
            let mine: Vec<_> = sets
                .iter()
                .filter(|(k, ..)| *k == kind)
                .map(|(_, p, t)| (p.clone(), t.clone()))
                .collect();
            let filter = f.clone();
            let limit = self.time_limit;
            pending.push((
                f,
                Some(tokio::spawn(async move {
                    let mut rows = Vec::new();
                    for (prepared, tables) in mine {
                        let run = async {
                            let plan = prepared.plan(&filter).await?;
                            let plan = prepared.bind(plan, &tables)?;
                            run_plan(&prepared.engine, &plan).await
                        };
                        rows.extend(within(limit, run).await?);
                    }
                    Ok::<_, Error>(rows)
                })),
            ));
        }
        let mut out = Vec::with_capacity(filters.len());
        for (f, task) in pending {
            let rows = match task {
                Some(task) => task.await.unwrap_or_else(|e| {
                    Err(Error::Invalid(format!("the filter's run failed: {e}")))
                }),
                None => {
                    let kind = kind_of(&f.query);
                    let mut rows = Ok(Vec::new());
                    for (_, _, tables) in sets.iter().filter(|(k, ..)| *k == kind) {
                        match self.run_one(f, tables.to_vec()).await {
                            Ok(b) => {
                                if let Ok(v) = &mut rows {
                                    v.extend(b);
                                }
                            }
                            Err(e) => {
                                rows = Err(e);
                                break;
                            }
                        }
                    }
                    rows
                }
            };
            out.push(Outcome { filter: f.id, rows });
        }
        Ok(out)
    }

    /// The filters' plans over alert tables of the shapes of `tables`: kept from earlier
    /// batches, or a new set (the oldest set forgotten past [`PREPARED_SHAPES`]).
    fn prepared_for(
        &self,
        kind: Kind,
        tables: &[(&'static str, RecordBatch)],
    ) -> Result<Arc<Prepared>> {
        let shapes: Vec<(&'static str, SchemaRef)> =
            tables.iter().map(|(n, b)| (*n, b.schema())).collect();
        let mut kept = self.prepared.lock().expect("prepared filters");
        if let Some(p) = kept.iter().find(|p| p.kind == kind && p.shapes == shapes) {
            return Ok(p.clone());
        }
        let placeholders = shapes
            .iter()
            .map(|(_, s)| memory_table(s.clone(), vec![]))
            .collect::<Result<Vec<_>>>()?;
        let extra = shapes
            .iter()
            .zip(&placeholders)
            .map(|((n, _), t)| (SCHEMA.to_string(), n.to_string(), t.clone()))
            .collect();
        let prepared = Arc::new(Prepared {
            kind,
            shapes,
            placeholders,
            engine: Arc::new(self.engine_with(extra)?),
            plans: Mutex::new(HashMap::new()),
        });
        kept.push(prepared.clone());
        if kept.len() > PREPARED_SHAPES {
            kept.remove(0);
        }
        Ok(prepared)
    }

    /// Forgets the plans of filters other than `filters` (deleted or paused ones).
    fn forget_all_but(&self, filters: &[Filter]) {
        let ids: HashSet<i64> = filters.iter().map(|f| f.id).collect();
        for p in self.prepared.lock().expect("prepared filters").iter() {
            p.plans
                .lock()
                .expect("filter plans")
                .retain(|id, _| ids.contains(id));
        }
    }

    async fn run_one(
        &self,
        f: &Filter,
        tables: Vec<(&'static str, Arc<dyn TableProvider>)>,
    ) -> Result<Vec<RecordBatch>> {
        let engine = self.engine_for(&f.owner, &f.query, tables).await?;
        let run = async {
            let plan = engine.optimized_plan(&f.query, Lang::Adql).await?;
            run_plan(&engine, &plan).await
        };
        within(self.time_limit, run).await
    }
}

/// An in-memory table of `batches` (one partition).
fn memory_table(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<Arc<dyn TableProvider>> {
    let t = datafusion::datasource::MemTable::try_new(schema, vec![batches])
        .map_err(meridian_engine::Error::from)?;
    Ok(Arc::new(t))
}

/// Whether a filter's query may name the owner's MyDB tables (it then needs a session of
/// its own, with them).
fn reads_mydb(query: &str) -> bool {
    query.to_ascii_lowercase().contains("mydb.")
}

/// `run` (a filter's run over one batch), stopped past `limit`: its error then says so.
async fn within<T>(
    limit: std::time::Duration,
    run: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(Error::Invalid(format!(
            "the filter ran longer than its limit of {} s on one batch of alerts and was \
             stopped",
            limit.as_secs_f64()
        ))),
    }
}

/// Runs a filter's optimized `plan` on `engine` (a session with the batch's alert
/// tables); its result must have the column `alertId`.
async fn run_plan(engine: &Engine, plan: &LogicalPlan) -> Result<Vec<RecordBatch>> {
    use futures::TryStreamExt;
    let plan = engine.physical_plan_of(plan).await?;
    let batches: Vec<RecordBatch> = meridian_engine::execute(plan, engine)?
        .try_collect()
        .await
        .map_err(meridian_engine::Error::from)?;
    if let Some(b) = batches.first()
        && key_index(&b.schema()).is_none()
    {
        return Err(Error::Invalid(format!(
            "the filter's result has no column {KEY}"
        )));
    }
    Ok(batches)
}

fn key_index(schema: &Schema) -> Option<usize> {
    schema
        .fields()
        .iter()
        .position(|f| f.name().eq_ignore_ascii_case(KEY))
}

/// The matches in a filter's result rows: one per alert, its rows as a JSON array.
pub fn matches(filter: i64, batches: &[RecordBatch]) -> Result<Vec<Match>> {
    let mut by_alert: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        let key = key_index(&b.schema())
            .ok_or_else(|| Error::Invalid(format!("the filter's result has no column {KEY}")))?;
        let ids = arrow::compute::cast(b.column(key), &DataType::Int64)?;
        let ids: &Int64Array = ids.as_primitive::<Int64Type>();
        // One JSON object a line, a line a row (JSON escapes line breaks in strings).
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(b)?;
        writer.finish()?;
        let text = String::from_utf8(writer.into_inner())
            .map_err(|e| Error::Invalid(format!("the filter's rows as JSON: {e}")))?;
        for (i, row) in text.lines().enumerate() {
            if ids.is_valid(i) {
                by_alert
                    .entry(ids.value(i))
                    .or_default()
                    .push(row.to_string());
            }
        }
    }
    Ok(by_alert
        .into_iter()
        .map(|(alert_id, rows)| Match {
            filter,
            alert_id,
            rows: format!("[{}]", rows.join(",")),
        })
        .collect())
}

/// Appends a filter's result rows to MyDB table `table` of `owner`, leaving out the rows
/// of alerts the table already holds (so a batch filtered again after a restart adds
/// nothing twice); written then renamed, within the owner's quota. Returns the rows added.
pub fn append_mydb(
    mydb: &MyDb,
    owner: &str,
    table: &str,
    batches: &[RecordBatch],
) -> Result<usize> {
    let new: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let Some(first) = new.first() else {
        return Ok(0);
    };
    let fail = |e: meridian_services::Error| Error::Invalid(format!("MyDB table '{table}': {e}"));
    let path = mydb.path(owner, table).map_err(fail)?;
    let mut old: Vec<RecordBatch> = Vec::new();
    if path.is_file() {
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| Error::Invalid(format!("MyDB table '{table}': {e}")))?;
        for b in reader {
            old.push(b?);
        }
    }
    let schema = match old.first() {
        Some(b) => b.schema(),
        None => first.schema(),
    };
    let key = key_index(&schema).ok_or_else(|| {
        Error::Invalid(format!(
            "MyDB table '{table}' has no column {KEY}: it holds something else; name \
             another table"
        ))
    })?;
    let mut seen: HashSet<i64> = HashSet::new();
    for b in &old {
        let ids = arrow::compute::cast(b.column(key), &DataType::Int64)?;
        seen.extend(ids.as_primitive::<Int64Type>().iter().flatten());
    }
    let mut added = Vec::new();
    let mut rows_added = 0;
    for b in new {
        let b = conform(b, &schema, table)?;
        let ids = arrow::compute::cast(b.column(key), &DataType::Int64)?;
        let keep: arrow::array::BooleanArray = ids
            .as_primitive::<Int64Type>()
            .iter()
            .map(|id| Some(id.is_some_and(|id| !seen.contains(&id))))
            .collect();
        let b = arrow::compute::filter_record_batch(&b, &keep)?;
        rows_added += b.num_rows();
        added.push(b);
    }
    if rows_added == 0 {
        return Ok(0);
    }
    let staged = mydb.staging_path(owner, table).map_err(fail)?;
    let write = || -> Result<()> {
        let file = std::fs::File::create(&staged).map_err(|source| Error::Io {
            path: staged.display().to_string(),
            source,
        })?;
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None)
            .map_err(|e| Error::Invalid(format!("MyDB table '{table}': {e}")))?;
        for b in old.iter().chain(added.iter()) {
            w.write(b)
                .map_err(|e| Error::Invalid(format!("MyDB table '{table}': {e}")))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| Error::Invalid(format!("MyDB table '{table}': {e}")))?;
        file.sync_all().map_err(|source| Error::Io {
            path: staged.display().to_string(),
            source,
        })
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&staged);
        return Err(e);
    }
    mydb.commit(owner, table, &staged, true).map_err(fail)?;
    Ok(rows_added)
}

/// `b` with the columns of `schema` (the MyDB table's), by name and cast; an error naming
/// the difference when the filter's rows do not fit the table.
fn conform(b: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    if b.schema().fields() == schema.fields() {
        return Ok(b.clone());
    }
    let given = b.schema();
    let names: Vec<&str> = given.fields().iter().map(|f| f.name().as_str()).collect();
    if names.len() != schema.fields().len() {
        return Err(Error::Invalid(format!(
            "MyDB table '{table}' has other columns than the filter's result ({names:?}); \
             name another table"
        )));
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = b.column_by_name(f.name()).ok_or_else(|| {
                Error::Invalid(format!(
                    "MyDB table '{table}' has column {} which the filter's result lacks",
                    f.name()
                ))
            })?;
            Ok(arrow::compute::cast(c, f.data_type())?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A runtime of `builder` whose threads have room for query plans' stacks; `what` names
/// it in the error.
fn filter_runtime(
    builder: &mut tokio::runtime::Builder,
    what: &str,
) -> Result<tokio::runtime::Runtime> {
    builder
        .thread_stack_size(meridian_engine::guard::EXECUTION_STACK_BYTES)
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: what.into(),
            source,
        })
}

/// The filter stage of the consumer: after a batch is stored and before its offsets are
/// committed, every active filter runs over it; matches are appended to MyDB tables and
/// queued for the other outputs. A filter that fails is paused with its reason and the
/// stream goes on.
pub struct Filtering {
    store: Arc<crate::filters::FilterStore>,
    evaluator: Evaluator,
    mydb: Option<Arc<MyDb>>,
    runtime: tokio::runtime::Runtime,
    /// Where the filters' operators run (see [`Evaluator::with_executor`]).
    _operators: tokio::runtime::Runtime,
    /// Matches waiting for delivery above which the consumer stops reading (backpressure).
    pub max_backlog: u64,
}

/// What the filter stage did with one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Filtered {
    /// Filters run.
    pub filters: usize,
    /// Matches new to the outbox.
    pub matches: usize,
    /// Rows added to MyDB tables.
    pub mydb_rows: usize,
    /// Filters paused by a failure.
    pub paused: usize,
}

impl Filtering {
    /// The stage over `store`'s filters, queries run on `engine`, MyDB tables in `mydb`.
    pub fn new(
        store: Arc<crate::filters::FilterStore>,
        engine: Arc<Engine>,
        mydb: Option<Arc<MyDb>>,
    ) -> Result<Self> {
        let runtime = filter_runtime(
            tokio::runtime::Builder::new_multi_thread().worker_threads(2),
            "a runtime for alert filters",
        )?;
        let operators = filter_runtime(
            tokio::runtime::Builder::new_multi_thread().thread_name("alert-filter-operators"),
            "a runtime for alert filters' operators",
        )?;
        Ok(Self {
            store,
            evaluator: Evaluator::new(engine, mydb.clone())
                .with_executor(operators.handle().clone()),
            mydb,
            runtime,
            _operators: operators,
            max_backlog: 1_000_000,
        })
    }

    /// Sets the longest run of one filter over one batch (see [`FILTER_TIME_LIMIT`]).
    pub fn set_filter_time_limit(&mut self, limit: std::time::Duration) {
        self.evaluator.time_limit = limit;
    }

    /// Matches waiting for delivery.
    pub fn backlog(&self) -> Result<u64> {
        self.store.backlog()
    }

    /// Runs the active filters over `alerts` (stored already): what was run (matches not
    /// yet counted) and the matches found, not yet queued. Filters that fail are paused,
    /// and MyDB outputs appended, here.
    pub fn evaluate(&self, alerts: &[RecordBatch]) -> Result<(Filtered, Vec<Match>)> {
        let filters = self.active()?;
        let outcomes = self.run(&filters, alerts)?;
        self.settle(&filters, outcomes)
    }

    /// The filters to run now.
    pub fn active(&self) -> Result<Vec<Filter>> {
        self.store.active()
    }

    /// Whether any of `filters` may read the tables alerts are stored in (then they run
    /// after the batch is stored, so that they see it; others may run while it is stored).
    pub fn read_stored_alerts(filters: &[Filter]) -> bool {
        let stored: Vec<&str> = [Kind::Rubin, Kind::Ztf]
            .into_iter()
            .flat_map(crate::load::tables)
            .map(|t| t.catalog)
            .collect();
        filters.iter().any(|f| {
            let q = f.query.to_ascii_lowercase();
            stored.iter().any(|t| q.contains(t))
        })
    }

    /// Runs `filters` over `alerts`, with no effect yet: per filter, its rows or its error
    /// (see [`Filtering::settle`]).
    pub fn run(&self, filters: &[Filter], alerts: &[RecordBatch]) -> Result<Vec<Outcome>> {
        if filters.is_empty() || alerts.iter().all(|a| a.num_rows() == 0) {
            return Ok(Vec::new());
        }
        self.runtime.block_on(self.evaluator.run(filters, alerts))
    }

    /// What [`Filtering::run`] found for `filters`: the matches, not yet queued. Filters
    /// that failed are paused, and MyDB outputs appended, here.
    pub fn settle(
        &self,
        filters: &[Filter],
        outcomes: Vec<Outcome>,
    ) -> Result<(Filtered, Vec<Match>)> {
        let mut done = Filtered {
            filters: filters.len(),
            ..Default::default()
        };
        let mut queued = Vec::new();
        for (f, outcome) in filters.iter().zip(outcomes) {
            let rows = match outcome.rows {
                Ok(rows) => rows,
                Err(e) => {
                    self.store.set_state(
                        f.id,
                        crate::filters::State::Paused,
                        Some(&format!("its query failed: {e}")),
                    )?;
                    done.paused += 1;
                    continue;
                }
            };
            let found = match matches(f.id, &rows) {
                Ok(m) => m,
                Err(e) => {
                    self.store.set_state(
                        f.id,
                        crate::filters::State::Paused,
                        Some(&e.to_string()),
                    )?;
                    done.paused += 1;
                    continue;
                }
            };
            if found.is_empty() {
                continue;
            }
            if let (Some(table), Some(mydb)) = (&f.outputs.mydb_table, &self.mydb) {
                match append_mydb(mydb, &f.owner, table, &rows) {
                    Ok(n) => done.mydb_rows += n,
                    Err(e) => {
                        self.store.set_state(
                            f.id,
                            crate::filters::State::Paused,
                            Some(&format!("its MyDB output failed: {e}")),
                        )?;
                        done.paused += 1;
                        continue;
                    }
                }
            }
            queued.extend(found);
        }
        Ok((done, queued))
    }

    /// Queues the matches [`Filtering::evaluate`] found for the filters' outputs; returns
    /// how many were new to the outbox.
    pub fn queue(&self, matches: &[Match]) -> Result<usize> {
        self.store.enqueue(matches)
    }

    /// Evaluates the filters over `alerts` and queues the matches (see
    /// [`Filtering::evaluate`] and [`Filtering::queue`]).
    pub fn apply(&self, alerts: &[RecordBatch]) -> Result<Filtered> {
        let (mut done, matches) = self.evaluate(alerts)?;
        done.matches = self.queue(&matches)?;
        Ok(done)
    }
}
