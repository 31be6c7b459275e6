//! Error messages (position, expectation, suggestion) and the shape of parsed queries.

use meridian_adql::ast::*;
use meridian_adql::{Error, FunctionRegistry, Span, parse};

fn err(q: &str) -> Error {
    parse(q, &FunctionRegistry::adql()).expect_err(q)
}

fn ok(q: &str) -> Query {
    parse(q, &FunctionRegistry::adql()).unwrap_or_else(|e| panic!("{q}: {e}"))
}

fn select(q: &Query) -> &Select {
    match &q.body {
        SetExpr::Select(s) => s,
        other => panic!("not a select: {other:?}"),
    }
}

#[test]
fn errors_give_line_column_and_expectation() {
    let e = err("SELECT ra, dec\nFROM gaia\nWHERE ra >");
    assert_eq!(
        e.span(),
        Span {
            line: 3,
            column: 11
        }
    );
    assert!(
        e.to_string()
            .contains("expected an expression, found the end of the query"),
        "{e}"
    );
    let e = err("SELECT ra dec mag FROM t");
    assert!(
        e.to_string().contains("line 1, column 15") && e.to_string().contains("FROM"),
        "{e}"
    );
    let e = err("SELECT TOP -10 ra FROM t");
    assert!(e.to_string().contains("TOP"), "{e}");
}

#[test]
fn reserved_words_suggest_quoting() {
    let e = err("SELECT distance FROM stars");
    assert!(e.to_string().contains("\"distance\""), "{e}");
    let e = err("SELECT ra FROM select");
    assert!(e.to_string().contains("reserved"), "{e}");
    // Delimited, they are names.
    let q = ok("SELECT \"distance\", \"Size\" FROM \"select\"");
    let SelectItem::Expr {
        expr: Expr::Column(name),
        ..
    } = &select(&q).items[1]
    else {
        panic!()
    };
    assert!(name.last().quoted && name.last().matches("Size") && !name.last().matches("size"));
}

#[test]
fn unknown_functions_and_arity() {
    let e = err("SELECT SQRTT(x) FROM t");
    assert!(e.to_string().contains("did you mean SQRT?"), "{e}");
    let e = err("SELECT ATAN2(x) FROM t");
    assert!(
        e.to_string().contains("ATAN2 takes 2 argument(s), got 1"),
        "{e}"
    );
    let e = err("SELECT * FROM t WHERE CONTAINS(POINT(ra, dec), CIRCLE(10, 20, 1))");
    assert!(e.to_string().contains("1 = CONTAINS"), "{e}");
    let e = err("SELECT POINT(1, 2) || 'x' FROM t");
    assert!(e.to_string().contains("geometry"), "{e}");
    let mut udfs = FunctionRegistry::adql();
    udfs.declare("q3c_dist", 4, 4, meridian_adql::functions::Kind::Numeric);
    parse("SELECT q3c_dist(ra, dec, 10, 20) FROM t", &udfs).unwrap();
}

#[test]
fn full_select_shape() {
    let q = ok("SELECT DISTINCT TOP 10 g.source_id AS id, g.ra, 2*x mag2 \
                FROM gaia.dr3 AS g LEFT OUTER JOIN tycho2 t USING (hip) \
                WHERE 1 = CONTAINS(POINT('ICRS', g.ra, g.dec), CIRCLE('ICRS', 56.75, 24.12, 1)) \
                  AND phot_g_mean_mag BETWEEN 5 AND 10 AND name ILIKE 'hd%' AND x IS NOT NULL \
                GROUP BY g.source_id HAVING COUNT(*) > 1 ORDER BY 1 DESC, id OFFSET 5");
    let s = select(&q);
    assert!(s.distinct);
    assert_eq!(s.top, Some(10));
    assert_eq!(s.items.len(), 3);
    let SelectItem::Expr { alias: Some(a), .. } = &s.items[2] else {
        panic!()
    };
    assert_eq!(a.value, "mag2");
    let TableRef::Join {
        kind,
        constraint: JoinConstraint::Using(cols),
        ..
    } = &s.from[0]
    else {
        panic!()
    };
    assert_eq!(*kind, JoinKind::Left);
    assert_eq!(cols[0].value, "hip");
    assert_eq!(q.order_by.len(), 2);
    assert!(q.order_by[0].descending);
    assert_eq!(q.offset, Some(5));
    assert!(s.having.is_some());
}

#[test]
fn set_operations_ctes_and_subqueries() {
    let q = ok("WITH bright AS (SELECT * FROM gaia WHERE g < 10) \
                SELECT ra FROM bright UNION ALL SELECT ra FROM tycho EXCEPT SELECT ra FROM hip ORDER BY ra");
    assert_eq!(q.with.len(), 1);
    let SetExpr::SetOp {
        op: SetOp::Except,
        left,
        ..
    } = &q.body
    else {
        panic!("{:?}", q.body)
    };
    assert!(matches!(
        **left,
        SetExpr::SetOp {
            op: SetOp::Union,
            all: true,
            ..
        }
    ));
    let q = ok(
        "SELECT * FROM (SELECT ra, dec FROM gaia) AS sub WHERE ra IN (SELECT ra FROM t) AND EXISTS (SELECT 1 FROM u)",
    );
    assert!(matches!(select(&q).from[0], TableRef::Derived { .. }));
    let e = err("SELECT * FROM (SELECT ra FROM gaia)");
    assert!(e.to_string().contains("correlation name"), "{e}");
}

#[test]
fn case_cast_in_unit_and_literals() {
    ok(
        "SELECT CASE WHEN g < 10 THEN 'bright' ELSE 'faint' END, CASE band WHEN 'g' THEN 1 END, \
        CAST(ra AS DOUBLE PRECISION), CAST(id AS VARCHAR(20)), IN_UNIT(plx, 'arcsec'), \
        COALESCE(a, b, 0), NULLIF(a, 0), 0x1F & flags, ~flags, 1.5e-3, 'it''s' FROM t -- comment",
    );
    let e = err("SELECT CAST(ra AS BLOB) FROM t");
    assert!(e.to_string().contains("cannot CAST to 'BLOB'"), "{e}");
}

/// Hostile nesting is an error naming the limit, never a stack overflow; long chains of
/// OR and AND (lists of ids) parse, balanced.
#[test]
fn deep_nesting_is_refused_and_long_chains_parse() {
    let f = meridian_adql::FunctionRegistry::adql();
    let deep = format!(
        "SELECT a FROM t WHERE {}a = 1{}",
        "(".repeat(1000),
        ")".repeat(1000)
    );
    let e = meridian_adql::parse(&deep, &f).unwrap_err().to_string();
    assert!(e.contains("nests too deeply"), "{e}");
    let nots = format!("SELECT a FROM t WHERE {} a = 1", "NOT ".repeat(100_000));
    let e = meridian_adql::parse(&nots, &f).unwrap_err().to_string();
    assert!(e.contains("nests too deeply"), "{e}");
    let sums = format!("SELECT {} FROM t", vec!["a"; 50_000].join(" + "));
    let e = meridian_adql::parse(&sums, &f).unwrap_err().to_string();
    assert!(e.contains("nests too deeply"), "{e}");
    let minus = format!("SELECT {}a FROM t", "-".repeat(100_000));
    assert!(meridian_adql::parse(&minus, &f).is_err());
    let subqueries = format!(
        "SELECT a FROM {}t{}",
        "(SELECT a FROM ".repeat(500),
        ") AS s".repeat(500)
    );
    let e = meridian_adql::parse(&subqueries, &f)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nests too deeply"), "{e}");
    // 5,000 ids as an OR chain and 50,000 in an IN list are real queries.
    let ors: Vec<String> = (0..5000).map(|i| format!("hip = {i}")).collect();
    meridian_adql::parse(&format!("SELECT a FROM t WHERE {}", ors.join(" OR ")), &f).unwrap();
    let ids: Vec<String> = (0..50_000).map(|i| i.to_string()).collect();
    meridian_adql::parse(
        &format!("SELECT a FROM t WHERE hip IN ({})", ids.join(", ")),
        &f,
    )
    .unwrap();
    let ands: Vec<String> = (0..5000).map(|i| format!("x <> {i}")).collect();
    meridian_adql::parse(&format!("SELECT a FROM t WHERE {}", ands.join(" AND ")), &f).unwrap();
}
