//! ADQL to DataFusion SQL. Names are resolved here, under ADQL's rules (regular
//! identifiers match case-insensitively, delimited ones exactly), and emitted quoted with
//! the catalog's exact spelling; unknown tables and columns get "did you mean" hints.
//! Geometry predicates become the spatial UDFs that the HATS table provider recognises for
//! pruning: `CONTAINS(POINT(a, b), CIRCLE(c, d, r))` becomes `adql_contains_circle(a, b, c,
//! d, r)`, `DISTANCE(POINT(a, b), POINT(c, d))` becomes `adql_distance(a, b, c, d)`.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use meridian_adql::ast::*;
use meridian_adql::{Error as AdqlError, Span};

use meridian_sky::Region;

use crate::{Error, Result};

/// Looks up tables by ADQL name.
pub trait Tables {
    /// The registered (DataFusion) name and schema of a table, by the name used in ADQL.
    fn resolve(&self, name: &ObjectName) -> Option<(String, SchemaRef)>;
    /// All table names, for suggestions.
    fn names(&self) -> Vec<String>;
}

fn semantic(span: Span, message: String) -> Error {
    Error::Adql(AdqlError::Semantic { span, message })
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub(crate) fn suggest<'a>(wanted: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| {
            (
                strsim::levenshtein(&wanted.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .filter(|(d, c)| *d <= 2.max(wanted.len() / 4) && *d < c.len())
        .min()
        .map(|(_, c)| format!("; did you mean {c}?"))
        .unwrap_or_default()
}

/// One table in scope: the name columns are qualified with, and its columns.
#[derive(Clone)]
struct ScopeTable {
    qualifier: Ident,
    columns: Vec<String>,
    /// Units of the columns that declare one (catalog tables only).
    units: HashMap<String, String>,
}

struct Translator<'a> {
    tables: &'a dyn Tables,
    ctes: HashMap<String, Vec<String>>,
}

/// Translates a validated ADQL query to SQL for DataFusion.
pub fn to_sql(q: &Query, tables: &dyn Tables) -> Result<String> {
    Translator {
        tables,
        ctes: HashMap::new(),
    }
    .query(q)
}

impl Translator<'_> {
    fn query(&mut self, q: &Query) -> Result<String> {
        let mut out = String::new();
        if !q.with.is_empty() {
            let mut parts = Vec::new();
            for cte in &q.with {
                let body = self.query(&cte.query)?;
                let cols = if cte.columns.is_empty() {
                    self.output_columns(&cte.query)?
                } else {
                    cte.columns.iter().map(|c| c.value.clone()).collect()
                };
                let collist = if cte.columns.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        cte.columns
                            .iter()
                            .map(|c| quote(&c.value))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                parts.push(format!("{}{collist} AS ({body})", quote(&cte.name.value)));
                self.ctes.insert(cte.name.value.to_lowercase(), cols);
            }
            out.push_str(&format!("WITH {} ", parts.join(", ")));
        }
        // TOP of a lone SELECT applies after ORDER BY and OFFSET.
        let (body, top) = match &q.body {
            SetExpr::Select(s) => (self.select(s, &q.order_by)?, s.top),
            other => (self.set_expr(other)?, None),
        };
        out.push_str(&body);
        if let (false, SetExpr::SetOp { .. } | SetExpr::Query(_)) = (q.order_by.is_empty(), &q.body)
        {
            let items = q
                .order_by
                .iter()
                .map(|o| self.order_item(o, &[]))
                .collect::<Result<Vec<_>>>()?;
            out.push_str(&format!(" ORDER BY {}", items.join(", ")));
        }
        if let Some(n) = top {
            out.push_str(&format!(" LIMIT {n}"));
        }
        if let Some(n) = q.offset {
            out.push_str(&format!(" OFFSET {n}"));
        }
        Ok(out)
    }

    fn set_expr(&mut self, s: &SetExpr) -> Result<String> {
        Ok(match s {
            SetExpr::Select(sel) => {
                let mut text = self.select(sel, &[])?;
                if let Some(n) = sel.top {
                    text = format!("{text} LIMIT {n}");
                }
                format!("({text})")
            }
            SetExpr::Query(q) => format!("({})", self.query(q)?),
            SetExpr::SetOp {
                op,
                all,
                left,
                right,
            } => {
                let op = match op {
                    SetOp::Union => "UNION",
                    SetOp::Except => "EXCEPT",
                    SetOp::Intersect => "INTERSECT",
                };
                format!(
                    "{} {op}{} {}",
                    self.set_expr(left)?,
                    if *all { " ALL" } else { "" },
                    self.set_expr(right)?
                )
            }
        })
    }

    /// Output column names of a query (for derived tables and CTEs).
    fn output_columns(&mut self, q: &Query) -> Result<Vec<String>> {
        let mut body = &q.body;
        loop {
            match body {
                SetExpr::SetOp { left, .. } => body = left,
                SetExpr::Query(inner) => return self.output_columns(inner),
                SetExpr::Select(s) => {
                    let scope = self.scope(&s.from)?;
                    let mut cols = Vec::new();
                    for item in &s.items {
                        match item {
                            SelectItem::Wildcard => scope
                                .iter()
                                .for_each(|t| cols.extend(t.columns.iter().cloned())),
                            SelectItem::QualifiedWildcard(n) => {
                                if let Some(t) =
                                    scope.iter().find(|t| n.last().matches(&t.qualifier.value))
                                {
                                    cols.extend(t.columns.iter().cloned());
                                }
                            }
                            SelectItem::Expr { alias: Some(a), .. } => cols.push(a.value.clone()),
                            SelectItem::Expr {
                                expr: Expr::Column(n),
                                ..
                            } => {
                                let (_, c) = self.resolve_column(n, &scope)?;
                                cols.push(c);
                            }
                            SelectItem::Expr { expr, .. } => cols.push(self.expr(expr, &scope)?),
                        }
                    }
                    return Ok(cols);
                }
            }
        }
    }

    fn scope(&mut self, from: &[TableRef]) -> Result<Vec<ScopeTable>> {
        let mut out = Vec::new();
        for t in from {
            self.scope_of(t, &mut out)?;
        }
        Ok(out)
    }

    fn scope_of(&mut self, t: &TableRef, out: &mut Vec<ScopeTable>) -> Result<()> {
        match t {
            TableRef::Table { name, alias } => {
                let mut units = HashMap::new();
                let columns = if let (1, Some(cols)) = (
                    name.0.len(),
                    self.ctes.get(&name.last().value.to_lowercase()),
                ) {
                    cols.clone()
                } else {
                    let (_, schema) = self.lookup_table(name)?;
                    for f in schema.fields() {
                        if let Some(u) = f.metadata().get("unit").filter(|u| !u.is_empty()) {
                            units.insert(f.name().clone(), u.clone());
                        }
                    }
                    schema.fields().iter().map(|f| f.name().clone()).collect()
                };
                out.push(ScopeTable {
                    qualifier: alias.clone().unwrap_or_else(|| name.last().clone()),
                    columns,
                    units,
                });
            }
            TableRef::Derived { query, alias } => {
                let columns = self.output_columns(query)?;
                out.push(ScopeTable {
                    qualifier: alias.clone(),
                    columns,
                    units: HashMap::new(),
                });
            }
            TableRef::Join { left, right, .. } => {
                self.scope_of(left, out)?;
                self.scope_of(right, out)?;
            }
        }
        Ok(())
    }

    fn lookup_table(&self, name: &ObjectName) -> Result<(String, SchemaRef)> {
        self.tables.resolve(name).ok_or_else(|| {
            let names = self.tables.names();
            let hint = suggest(&name.last().value, names.iter().map(String::as_str));
            semantic(name.span(), format!("unknown table {name}{hint}"))
        })
    }

    fn table_ref(&mut self, t: &TableRef) -> Result<String> {
        Ok(match t {
            TableRef::Table { name, alias } => {
                let target = if name.0.len() == 1
                    && self.ctes.contains_key(&name.last().value.to_lowercase())
                {
                    quote(&name.last().value)
                } else {
                    quote(&self.lookup_table(name)?.0)
                };
                let qualifier = alias.as_ref().unwrap_or(name.last());
                format!("{target} AS {}", quote(&qualifier.value))
            }
            TableRef::Derived { query, alias } => {
                format!("({}) AS {}", self.query(query)?, quote(&alias.value))
            }
            TableRef::Join {
                left,
                right,
                kind,
                natural,
                constraint,
            } => {
                let scope = {
                    let mut s = Vec::new();
                    self.scope_of(t, &mut s)?;
                    s
                };
                let k = match kind {
                    JoinKind::Inner => "JOIN",
                    JoinKind::Left => "LEFT JOIN",
                    JoinKind::Right => "RIGHT JOIN",
                    JoinKind::Full => "FULL JOIN",
                    JoinKind::Cross => "CROSS JOIN",
                };
                let k = match (natural, constraint) {
                    (true, _) => format!("NATURAL {k}"),
                    (false, JoinConstraint::None) if *kind != JoinKind::Cross => {
                        "CROSS JOIN".to_string()
                    }
                    _ => k.to_string(),
                };
                let cond = match constraint {
                    JoinConstraint::On(e) => format!(" ON {}", self.expr(e, &scope)?),
                    JoinConstraint::Using(cols) => {
                        format!(
                            " USING ({})",
                            cols.iter()
                                .map(|c| quote(&c.value))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                    JoinConstraint::None => String::new(),
                };
                format!(
                    "{} {k} {}{cond}",
                    self.table_ref(left)?,
                    self.table_ref(right)?
                )
            }
        })
    }

    fn select(&mut self, s: &Select, order_by: &[OrderItem]) -> Result<String> {
        let scope = self.scope(&s.from)?;
        let mut items = Vec::new();
        for item in &s.items {
            items.push(match item {
                SelectItem::Wildcard => "*".to_string(),
                SelectItem::QualifiedWildcard(n) => {
                    let t = scope
                        .iter()
                        .find(|t| n.last().matches(&t.qualifier.value))
                        .ok_or_else(|| {
                            semantic(n.span(), format!("{n}.* names no table of the FROM clause"))
                        })?;
                    format!("{}.*", quote(&t.qualifier.value))
                }
                SelectItem::Expr { expr, alias } => {
                    let e = self.expr(expr, &scope)?;
                    match (alias, expr) {
                        (Some(a), _) => format!("{e} AS {}", quote(&a.value)),
                        // Keep the column's own name as the output name.
                        (None, Expr::Column(n)) => {
                            format!("{e} AS {}", quote(&self.resolve_column(n, &scope)?.1))
                        }
                        (None, _) => e,
                    }
                }
            });
        }
        let from = s
            .from
            .iter()
            .map(|t| self.table_ref(t))
            .collect::<Result<Vec<_>>>()?;
        let mut out = format!(
            "SELECT {}{} FROM {}",
            if s.distinct { "DISTINCT " } else { "" },
            items.join(", "),
            from.join(", ")
        );
        if let Some(w) = &s.selection {
            out.push_str(&format!(" WHERE {}", self.expr(w, &scope)?));
        }
        if !s.group_by.is_empty() {
            let g = s
                .group_by
                .iter()
                .map(|e| self.order_expr(e, &scope, &s.items))
                .collect::<Result<Vec<_>>>()?;
            out.push_str(&format!(" GROUP BY {}", g.join(", ")));
        }
        if let Some(h) = &s.having {
            out.push_str(&format!(" HAVING {}", self.expr(h, &scope)?));
        }
        if !order_by.is_empty() {
            let mut items = Vec::new();
            for o in order_by {
                let e = self.order_expr(&o.expr, &scope, &s.items)?;
                items.push(format!("{e}{}", if o.descending { " DESC" } else { "" }));
            }
            out.push_str(&format!(" ORDER BY {}", items.join(", ")));
        }
        Ok(out)
    }

    fn order_item(&mut self, o: &OrderItem, scope: &[ScopeTable]) -> Result<String> {
        let e = match &o.expr {
            Expr::Column(n) if n.0.len() == 1 => quote(&n.last().value),
            other => self.expr(other, scope)?,
        };
        Ok(format!("{e}{}", if o.descending { " DESC" } else { "" }))
    }

    /// ORDER BY / GROUP BY accept positions and select-list aliases too.
    fn order_expr(
        &mut self,
        e: &Expr,
        scope: &[ScopeTable],
        items: &[SelectItem],
    ) -> Result<String> {
        if let Expr::Column(n) = e
            && n.0.len() == 1
            && let Some(alias) = items.iter().find_map(|i| match i {
                SelectItem::Expr { alias: Some(a), .. }
                    if n.last().matches(&a.value) || a.matches(&n.last().value) =>
                {
                    Some(a)
                }
                _ => None,
            })
        {
            return Ok(quote(&alias.value));
        }
        self.expr(e, scope)
    }

    /// Resolves a column reference: (qualifier, exact column name).
    fn resolve_column(&self, n: &ObjectName, scope: &[ScopeTable]) -> Result<(String, String)> {
        let col = n.last();
        let candidates: Vec<&ScopeTable> = if n.0.len() > 1 {
            let q = &n.0[n.0.len() - 2];
            let t: Vec<&ScopeTable> = scope
                .iter()
                .filter(|t| q.matches(&t.qualifier.value) || t.qualifier.matches(&q.value))
                .collect();
            if t.is_empty() {
                let hint = suggest(&q.value, scope.iter().map(|t| t.qualifier.value.as_str()));
                return Err(semantic(
                    q.span,
                    format!("{} is not a table of the FROM clause{hint}", q.value),
                ));
            }
            t
        } else {
            scope.iter().collect()
        };
        let mut found = Vec::new();
        for t in &candidates {
            // Exact spelling first, then ADQL's case-insensitive match for regular names.
            let hit = t.columns.iter().find(|c| **c == col.value).or_else(|| {
                (!col.quoted)
                    .then(|| {
                        t.columns
                            .iter()
                            .find(|c| c.eq_ignore_ascii_case(&col.value))
                    })
                    .flatten()
            });
            if let Some(c) = hit {
                found.push((t.qualifier.value.clone(), c.clone()));
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => {
                let all: Vec<&str> = candidates
                    .iter()
                    .flat_map(|t| t.columns.iter().map(String::as_str))
                    .collect();
                let hint = suggest(&col.value, all.into_iter());
                Err(semantic(col.span, format!("unknown column {n}{hint}")))
            }
            _ => Err(semantic(
                col.span,
                format!(
                    "column {} is ambiguous: it is in {}; qualify it",
                    col.value,
                    found
                        .iter()
                        .map(|f| f.0.clone())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            )),
        }
    }

    fn args(&mut self, args: &[Expr], scope: &[ScopeTable]) -> Result<Vec<String>> {
        args.iter().map(|a| self.expr(a, scope)).collect()
    }

    /// The coordinates of a POINT (dropping a supported coordinate system).
    fn point_coords(&mut self, e: &Expr, scope: &[ScopeTable]) -> Result<Option<Vec<String>>> {
        let Expr::Function { name, args, .. } = strip(e) else {
            return Ok(None);
        };
        if !name.value.eq_ignore_ascii_case("POINT") {
            return Ok(None);
        }
        let coords = self.without_frame(args, 2)?;
        Ok(Some(self.args(coords, scope)?))
    }

    /// A geometry constructor (POINT, CIRCLE, BOX, POLYGON, or REGION of an STC-S literal)
    /// as its kind and coordinates in degrees.
    fn shape(
        &mut self,
        e: &Expr,
        scope: &[ScopeTable],
    ) -> Result<Option<(ShapeKind, Vec<String>)>> {
        let Expr::Function { name, args, .. } = strip(e) else {
            return Ok(None);
        };
        let kind = match name.value.to_ascii_uppercase().as_str() {
            "POINT" => {
                return Ok(self.point_coords(e, scope)?.map(|c| (ShapeKind::Point, c)));
            }
            "CIRCLE" => ShapeKind::Circle,
            "BOX" => ShapeKind::Box,
            "POLYGON" => ShapeKind::Polygon,
            "MOC" => {
                let Some(arg) = args.first() else {
                    return Err(semantic(name.span, "MOC takes one argument".into()));
                };
                // A literal is checked (and its pruning region read) here; any other text
                // expression (an uploaded MOC's column) is read as it is evaluated.
                let Expr::Literal(Literal::String(text), span) = strip(arg) else {
                    return Ok(Some((ShapeKind::Moc, vec![self.expr(arg, scope)?])));
                };
                let moc = meridian_sky::moc_parse(text.as_bytes())
                    .map_err(|e| semantic(*span, e.to_string()))?;
                let ascii = meridian_sky::moc_ascii(&moc)
                    .map_err(|e| semantic(*span, e.to_string()))?
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                return Ok(Some((ShapeKind::Moc, vec![format!("'{ascii}'")])));
            }
            "REGION" => {
                let Some(Expr::Literal(Literal::String(text), span)) = args.first().map(strip)
                else {
                    return Err(Error::Unsupported(format!(
                        "REGION at {}: the argument must be an STC-S string literal",
                        name.span
                    )));
                };
                let shape = meridian_sky::stcs::parse_stcs(text)
                    .map_err(|e| semantic(*span, e.to_string()))?;
                let num = |x: f64| format!("{x:?}");
                return Ok(Some(match shape {
                    meridian_sky::stcs::Shape::Point(p) => {
                        (ShapeKind::Point, vec![num(p.ra_deg()), num(p.dec_deg())])
                    }
                    meridian_sky::stcs::Shape::Region(Region::Circle(c)) => (
                        ShapeKind::Circle,
                        vec![
                            num(c.center().ra_deg()),
                            num(c.center().dec_deg()),
                            num(c.radius_deg()),
                        ],
                    ),
                    meridian_sky::stcs::Shape::Region(Region::Box(b)) => (
                        ShapeKind::Box,
                        vec![
                            num(b.center().ra_deg()),
                            num(b.center().dec_deg()),
                            num(b.width_deg()),
                            num(b.height_deg()),
                        ],
                    ),
                    meridian_sky::stcs::Shape::Region(Region::Polygon(p)) => (
                        ShapeKind::Polygon,
                        p.vertices()
                            .iter()
                            .flat_map(|v| [num(v.ra_deg()), num(v.dec_deg())])
                            .collect(),
                    ),
                    meridian_sky::stcs::Shape::Region(Region::Moc(_)) => {
                        return Err(Error::Unsupported(format!(
                            "MOC in REGION at {}",
                            name.span
                        )));
                    }
                }));
            }
            _ => return Ok(None),
        };
        Ok(Some((kind, self.shape_coords(args, scope)?)))
    }

    /// The two coordinates of a point-valued expression: a POINT's own arguments, or the
    /// components of any other point value (CENTROID, a point column).
    fn point_or_value(&mut self, e: &Expr, scope: &[ScopeTable]) -> Result<Vec<String>> {
        match self.shape(e, scope)? {
            Some((ShapeKind::Point, c)) => Ok(c),
            Some((kind, _)) => Err(semantic(
                e.span(),
                format!(
                    "a POINT is expected here, not a {}",
                    format!("{kind:?}").to_uppercase()
                ),
            )),
            None => {
                let v = self.expr(e, scope)?;
                Ok(vec![
                    format!("adql_coord1({v})"),
                    format!("adql_coord2({v})"),
                ])
            }
        }
    }

    /// Arguments after an optional coordinate system, which must be ICRS (or empty/NULL,
    /// meaning the catalog's own frame).
    fn without_frame<'e>(&self, args: &'e [Expr], n: usize) -> Result<&'e [Expr]> {
        if args.len() == n + 1 {
            match strip(&args[0]) {
                Expr::Literal(Literal::String(s), span) => {
                    let frame = s.trim().to_ascii_uppercase();
                    if !(frame.is_empty()
                        || frame.starts_with("ICRS")
                        || frame == "J2000"
                        || frame == "FK5")
                    {
                        return Err(semantic(
                            *span,
                            format!("coordinate system '{s}' is not supported; use ICRS"),
                        ));
                    }
                }
                Expr::Literal(Literal::Null, _) => {}
                other => {
                    return Err(semantic(
                        other.span(),
                        "the coordinate system must be a string literal".into(),
                    ));
                }
            }
            return Ok(&args[1..]);
        }
        Ok(args)
    }

    /// CONTAINS / INTERSECTS of a point and a shape, as a UDF call.
    fn containment(&mut self, name: &Ident, args: &[Expr], scope: &[ScopeTable]) -> Result<String> {
        let up = name.value.to_ascii_uppercase();
        let (a, b) = (self.shape(&args[0], scope)?, self.shape(&args[1], scope)?);
        let is = |s: &Option<(ShapeKind, Vec<String>)>, k: ShapeKind| {
            s.as_ref().is_some_and(|s| s.0 == k)
        };
        if (is(&a, ShapeKind::Moc) && !is(&b, ShapeKind::Point))
            || (is(&b, ShapeKind::Moc) && !is(&a, ShapeKind::Point))
        {
            return Err(Error::Unsupported(format!(
                "{up} at {}: a MOC can only be tested against a POINT",
                name.span
            )));
        }
        let (point, region) = match (a, b) {
            (Some((ShapeKind::Point, p)), Some(r)) => (p, r),
            (Some(r), Some((ShapeKind::Point, p))) if up == "INTERSECTS" => (p, r),
            // A geometry value (a polygon column such as ObsCore's s_region, a point
            // column, a function's result) against a literal shape.
            (None, Some(r)) if r.0 != ShapeKind::Point || up == "INTERSECTS" => {
                let value = self.expr(&args[0], scope)?;
                let mode = match (r.0, up.as_str()) {
                    (ShapeKind::Point, _) => "holds",
                    (_, "INTERSECTS") => "intersects",
                    _ => "contains",
                };
                return Ok(region_meets(&value, mode, &r));
            }
            (Some(r), None) if up == "INTERSECTS" || r.0 == ShapeKind::Point => {
                let value = self.expr(&args[1], scope)?;
                let mode = if r.0 == ShapeKind::Point {
                    "holds"
                } else {
                    "intersects"
                };
                return Ok(region_meets(&value, mode, &r));
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "{up} at {}: one side must be a POINT, CIRCLE, BOX, POLYGON or REGION \
                     literal (CONTAINS of a shape in a geometry value is not supported)",
                    name.span
                )));
            }
        };
        let udf = match region.0 {
            ShapeKind::Circle => "adql_contains_circle",
            ShapeKind::Box => "adql_contains_box",
            ShapeKind::Polygon => "adql_contains_polygon",
            ShapeKind::Moc => "adql_contains_moc",
            ShapeKind::Point => {
                return Err(Error::Unsupported(format!(
                    "{up} at {} of two POINTs (compare them with DISTANCE)",
                    name.span
                )));
            }
        };
        Ok(format!(
            "{udf}({}, {})",
            point.join(", "),
            region.1.join(", ")
        ))
    }

    /// Coordinates of a CIRCLE, BOX or POLYGON: after an optional frame (a leading string
    /// or NULL literal), points are expanded into their two coordinates.
    fn shape_coords(&mut self, args: &[Expr], scope: &[ScopeTable]) -> Result<Vec<String>> {
        let rest = if matches!(
            args.first().map(strip),
            Some(Expr::Literal(Literal::String(_) | Literal::Null, _))
        ) {
            self.without_frame(args, args.len() - 1)?
        } else {
            args
        };
        let mut out = Vec::new();
        for a in rest {
            match self.point_coords(a, scope)? {
                Some(p) => out.extend(p),
                None => out.push(self.expr(a, scope)?),
            }
        }
        Ok(out)
    }

    fn expr(&mut self, e: &Expr, scope: &[ScopeTable]) -> Result<String> {
        Ok(match e {
            Expr::Column(n) => {
                let (q, c) = self.resolve_column(n, scope)?;
                format!("{}.{}", quote(&q), quote(&c))
            }
            Expr::Literal(l, _) => match l {
                Literal::Number(n) => match n.strip_prefix("0x").or_else(|| n.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(h, 16)
                        .map(|v| v.to_string())
                        .unwrap_or_else(|_| n.clone()),
                    None => n.clone(),
                },
                Literal::String(s) => format!("'{}'", s.replace('\'', "''")),
                Literal::Boolean(b) => b.to_string().to_uppercase(),
                Literal::Null => "NULL".into(),
            },
            Expr::Nested(inner) => format!("({})", self.expr(inner, scope)?),
            Expr::Unary { op, expr, .. } => {
                let inner = self.expr(expr, scope)?;
                match op {
                    UnaryOp::Minus => format!("(-{inner})"),
                    UnaryOp::Plus => inner,
                    UnaryOp::BitNot => format!("(~{inner})"),
                    UnaryOp::Not => format!("(NOT {inner})"),
                }
            }
            Expr::Binary {
                op, left, right, ..
            } => {
                let (l, r) = (self.expr(left, scope)?, self.expr(right, scope)?);
                let op = match op {
                    BinaryOp::Plus => "+",
                    BinaryOp::Minus => "-",
                    BinaryOp::Multiply => "*",
                    BinaryOp::Divide => "/",
                    BinaryOp::Modulo => "%",
                    BinaryOp::Concat => "||",
                    BinaryOp::BitAnd => "&",
                    BinaryOp::BitOr => "|",
                    BinaryOp::BitXor => "#",
                    BinaryOp::Eq => "=",
                    BinaryOp::NotEq => "<>",
                    BinaryOp::Lt => "<",
                    BinaryOp::LtEq => "<=",
                    BinaryOp::Gt => ">",
                    BinaryOp::GtEq => ">=",
                    BinaryOp::And => "AND",
                    BinaryOp::Or => "OR",
                };
                format!("({l} {op} {r})")
            }
            Expr::Function {
                name,
                args,
                star,
                distinct,
            } => self.function(name, args, *star, *distinct, scope)?,
            Expr::Case {
                operand,
                whens,
                else_result,
                ..
            } => {
                let mut s = String::from("CASE");
                if let Some(o) = operand {
                    s.push_str(&format!(" {}", self.expr(o, scope)?));
                }
                for (w, t) in whens {
                    s.push_str(&format!(
                        " WHEN {} THEN {}",
                        self.expr(w, scope)?,
                        self.expr(t, scope)?
                    ));
                }
                if let Some(e) = else_result {
                    s.push_str(&format!(" ELSE {}", self.expr(e, scope)?));
                }
                s.push_str(" END");
                s
            }
            Expr::Cast { expr, to, span } => {
                let t = match to.name.as_str() {
                    "DOUBLE PRECISION" => "DOUBLE".to_string(),
                    "INT" => "INTEGER".to_string(),
                    "CHAR" | "VARCHAR" => "VARCHAR".to_string(),
                    "POINT" | "CIRCLE" | "POLYGON" => {
                        return Err(Error::Unsupported(format!("CAST to {} at {span}", to.name)));
                    }
                    other => other.to_string(),
                };
                format!("CAST({} AS {t})", self.expr(expr, scope)?)
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => format!(
                "({} {}BETWEEN {} AND {})",
                self.expr(expr, scope)?,
                if *negated { "NOT " } else { "" },
                self.expr(low, scope)?,
                self.expr(high, scope)?
            ),
            Expr::Like {
                expr,
                negated,
                case_insensitive,
                pattern,
            } => format!(
                "({} {}{} {})",
                self.expr(expr, scope)?,
                if *negated { "NOT " } else { "" },
                if *case_insensitive { "ILIKE" } else { "LIKE" },
                self.expr(pattern, scope)?
            ),
            Expr::InList {
                expr,
                negated,
                list,
            } => format!(
                "({} {}IN ({}))",
                self.expr(expr, scope)?,
                if *negated { "NOT " } else { "" },
                self.args(list, scope)?.join(", ")
            ),
            Expr::InSubquery {
                expr,
                negated,
                query,
            } => {
                format!(
                    "({} {}IN ({}))",
                    self.expr(expr, scope)?,
                    if *negated { "NOT " } else { "" },
                    self.query(query)?
                )
            }
            Expr::IsNull { expr, negated } => {
                format!(
                    "({} IS {}NULL)",
                    self.expr(expr, scope)?,
                    if *negated { "NOT " } else { "" }
                )
            }
            Expr::Exists(q, _) => format!("(EXISTS ({}))", self.query(q)?),
            Expr::Subquery(q, _) => format!("({})", self.query(q)?),
        })
    }

    fn function(
        &mut self,
        name: &Ident,
        args: &[Expr],
        star: bool,
        distinct: bool,
        scope: &[ScopeTable],
    ) -> Result<String> {
        let up = name.value.to_ascii_uppercase();
        if star {
            return Ok("COUNT(*)".into());
        }
        let simple = |f: &str, a: Vec<String>| format!("{f}({})", a.join(", "));
        Ok(match up.as_str() {
            "CONTAINS" | "INTERSECTS" => self.containment(name, args, scope)?,
            "DISTANCE" => {
                let coords = if args.len() == 2 {
                    [
                        self.point_or_value(&args[0], scope)?,
                        self.point_or_value(&args[1], scope)?,
                    ]
                    .concat()
                } else {
                    self.args(args, scope)?
                };
                simple("adql_distance", coords)
            }
            "POINT" | "CIRCLE" | "BOX" | "POLYGON" | "REGION" | "MOC" => {
                let (kind, coords) = self
                    .shape(
                        &Expr::Function {
                            name: name.clone(),
                            args: args.to_vec(),
                            star,
                            distinct,
                        },
                        scope,
                    )?
                    .expect("a geometry constructor");
                if kind == ShapeKind::Moc {
                    return Err(Error::Unsupported(format!(
                        "MOC at {}: a MOC is a region for CONTAINS(POINT(...), MOC(...)) \
                         and AREA, not a value to select",
                        name.span
                    )));
                }
                simple(kind.value_udf(), coords)
            }
            "AREA" | "CENTROID" => {
                let Some((kind, coords)) = self.shape(&args[0], scope)? else {
                    return Err(Error::Unsupported(format!(
                        "{up} at {}: the argument must be a CIRCLE, BOX, POLYGON or REGION",
                        name.span
                    )));
                };
                match (up.as_str(), kind) {
                    ("AREA", ShapeKind::Point) => "0.0".into(),
                    ("AREA", ShapeKind::Circle) => simple("adql_area_circle", coords),
                    ("AREA", ShapeKind::Box) => simple("adql_area_box", coords),
                    ("AREA", ShapeKind::Polygon) => simple("adql_area_polygon", coords),
                    ("AREA", ShapeKind::Moc) => {
                        let Some(text) = coords[0]
                            .strip_prefix('\'')
                            .and_then(|t| t.strip_suffix('\''))
                        else {
                            return Err(Error::Unsupported(format!(
                                "AREA at {} of a MOC that is not a literal",
                                name.span
                            )));
                        };
                        let moc = meridian_sky::moc_parse(text.as_bytes())
                            .map_err(|e| semantic(name.span, e.to_string()))?;
                        format!("{:?}", meridian_sky::Region::Moc(Box::new(moc)).area_deg2())
                    }
                    (_, ShapeKind::Moc) => {
                        return Err(Error::Unsupported(format!(
                            "CENTROID at {} of a MOC",
                            name.span
                        )));
                    }
                    (_, ShapeKind::Polygon) => simple("adql_centroid_polygon", coords),
                    _ => simple("adql_point", coords[..2].to_vec()),
                }
            }
            "COORD1" | "COORD2" => {
                let c = self.point_or_value(&args[0], scope)?;
                c[if up == "COORD1" { 0 } else { 1 }].clone()
            }
            "COORDSYS" => {
                // Every position Meridian serves is ICRS; the argument is still translated so
                // that its errors surface.
                self.expr(&args[0], scope)?;
                "'ICRS'".into()
            }
            "IN_UNIT" => {
                let Expr::Literal(Literal::String(to), _) = strip(&args[1]) else {
                    return Err(semantic(
                        args[1].span(),
                        "IN_UNIT: the target unit must be a string literal".into(),
                    ));
                };
                let Expr::Column(c) = strip(&args[0]) else {
                    return Err(semantic(
                        args[0].span(),
                        "IN_UNIT: only a column with a declared unit can be converted".into(),
                    ));
                };
                let (q, col) = self.resolve_column(c, scope)?;
                let from = scope
                    .iter()
                    .find(|t| t.qualifier.value == q)
                    .and_then(|t| t.units.get(&col))
                    .ok_or_else(|| {
                        semantic(c.span(), format!("IN_UNIT: column {col} declares no unit"))
                    })?;
                let f = crate::units::factor(from, to)
                    .map_err(|m| semantic(args[1].span(), format!("IN_UNIT: {m}")))?;
                format!("({} * {f:?})", self.expr(&args[0], scope)?)
            }
            "LOG" => simple("ln", self.args(args, scope)?),
            "CEILING" => simple("ceil", self.args(args, scope)?),
            "TRUNCATE" => simple("trunc", self.args(args, scope)?),
            "RAND" => "random()".into(),
            "MOD" => {
                let a = self.args(args, scope)?;
                format!("({} % {})", a[0], a[1])
            }
            "COUNT" | "AVG" | "SUM" | "MIN" | "MAX" => {
                format!(
                    "{up}({}{})",
                    if distinct { "DISTINCT " } else { "" },
                    self.args(args, scope)?.join(", ")
                )
            }
            _ => simple(&up.to_ascii_lowercase(), self.args(args, scope)?),
        })
    }
}

/// Geometry constructors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShapeKind {
    Point,
    Circle,
    Box,
    Polygon,
    /// A MOC, carried as one SQL string literal of its ASCII serialisation.
    Moc,
}

impl ShapeKind {
    /// The function building this shape as a DALI value.
    fn value_udf(self) -> &'static str {
        match self {
            ShapeKind::Point => "adql_point",
            ShapeKind::Circle => "adql_circle",
            ShapeKind::Box => "adql_box",
            ShapeKind::Polygon => "adql_polygon",
            ShapeKind::Moc => "adql_moc",
        }
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip(inner),
        other => other,
    }
}

/// `adql_region_meets` (see [`crate::region_value`]) of a geometry value and a literal
/// shape.
fn region_meets(value: &str, mode: &str, shape: &(ShapeKind, Vec<String>)) -> String {
    let kind = match shape.0 {
        ShapeKind::Point => "point",
        ShapeKind::Circle => "circle",
        ShapeKind::Box => "box",
        ShapeKind::Polygon => "polygon",
        ShapeKind::Moc => "moc",
    };
    format!(
        "adql_region_meets({value}, '{mode}', '{kind}', {})",
        shape.1.join(", ")
    )
}
