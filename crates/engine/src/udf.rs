//! Spatial scalar functions, registered by name in every session. Their parameters are
//! all arguments (no state in the function objects), so executors can find them by name
//! when plans are shipped to a cluster.
//!
//! | name | arguments (degrees) | result |
//! |---|---|---|
//! | `adql_distance` | ra1, dec1, ra2, dec2 | separation, degrees |
//! | `adql_contains_circle` | ra, dec, centre ra, centre dec, radius | 1 inside (boundary included), 0 outside |
//! | `adql_contains_box` | ra, dec, centre ra, centre dec, width, height | 1 or 0 |
//! | `adql_contains_polygon` | ra, dec, ra1, dec1, ra2, dec2, ... | 1 or 0 |
//! | `ivo_healpix_index` | order, ra, dec | NESTED index |
//! | `q3c_dist` | ra1, dec1, ra2, dec2 | separation, degrees |
//! | `q3c_radial_query` | ra, dec, centre ra, centre dec, radius | true inside |
//! | `q3c_join` | ra1, dec1, ra2, dec2, radius | true within radius |
//! | `healpix_parent` | `_healpix_29`, order | NESTED cell at that order (keeps the sort) |
//! | `q3c_poly_query` | ra, dec, polygon as an array ra1, dec1, ra2, dec2, ... | true inside |
//! | `q3c_ang2ipix` | ra, dec | Q3C cube-face pixel at Q3C's default depth (nside 2^30) |
//! | `adql_contains_moc` | ra, dec, MOC (ASCII text) | 1 in one of the MOC's cells, 0 outside |
//!
//! A NULL argument gives NULL; an invalid region (negative radius, self-intersecting
//! polygon) is an execution error naming the function and the value.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use meridian_sky::{Circle, Polygon, Region, SkyBox, SkyPoint, angular_separation_deg, healpix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Distance,
    ContainsCircle,
    ContainsBox,
    ContainsPolygon,
    HealpixIndex,
    Q3cRadial,
    Q3cJoin,
    Q3cPoly,
    Q3cAng2ipix,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SpatialUdf {
    name: &'static str,
    op: Op,
    signature: Signature,
}

fn numeric_signature(n: usize) -> Signature {
    Signature::new(
        TypeSignature::Uniform(n, vec![DataType::Float64]),
        Volatility::Immutable,
    )
}

impl SpatialUdf {
    fn new(name: &'static str, op: Op) -> Self {
        let signature = match op {
            Op::Distance => numeric_signature(4),
            Op::ContainsCircle | Op::Q3cRadial | Op::Q3cJoin => numeric_signature(5),
            Op::ContainsBox => numeric_signature(6),
            Op::HealpixIndex => numeric_signature(3),
            Op::Q3cAng2ipix => numeric_signature(2),
            Op::Q3cPoly => Signature::new(TypeSignature::Any(3), Volatility::Immutable),
            Op::ContainsPolygon => Signature::new(
                TypeSignature::OneOf(
                    (4..=64)
                        .step_by(2)
                        .map(|n| TypeSignature::Uniform(n + 2, vec![DataType::Float64]))
                        .collect(),
                ),
                Volatility::Immutable,
            ),
        };
        Self {
            name,
            op,
            signature,
        }
    }
}

/// An execution error naming the function.
pub(crate) fn err(name: &str, message: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{name}: {message}"))
}

impl ScalarUDFImpl for SpatialUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.op {
            Op::Distance => DataType::Float64,
            Op::ContainsCircle | Op::ContainsBox | Op::ContainsPolygon => DataType::Int32,
            Op::HealpixIndex | Op::Q3cAng2ipix => DataType::Int64,
            Op::Q3cRadial | Op::Q3cJoin | Op::Q3cPoly => DataType::Boolean,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        if self.op == Op::Q3cPoly {
            return q3c_poly_query(self.name, args);
        }
        if matches!(self.op, Op::ContainsCircle | Op::Q3cRadial)
            && let Some(cone) = constant_cone(self.name, &args.args, self.op == Op::ContainsCircle)?
        {
            return self.cone_query(&cone, &args.args, n);
        }
        // A polygon given by literals is built once, not per row.
        let constant_polygon = if self.op == Op::ContainsPolygon
            && args.args[2..]
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            let coords: Vec<Option<f64>> = args.args[2..]
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => s.to_array().ok().and_then(|arr| {
                        let f = arrow::compute::cast(&arr, &DataType::Float64).ok()?;
                        let f = f.as_primitive::<Float64Type>();
                        (!f.is_null(0)).then(|| f.value(0))
                    }),
                    _ => None,
                })
                .collect();
            match coords.iter().copied().collect::<Option<Vec<f64>>>() {
                Some(c) => Some(Some(polygon(self.name, &c)?)),
                None => Some(None),
            }
        } else {
            None
        };
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let cols: Vec<ArrayRef> = arrays
            .iter()
            .map(|a| arrow::compute::cast(a, &DataType::Float64))
            .collect::<std::result::Result<_, _>>()?;
        let cols: Vec<&Float64Array> = cols
            .iter()
            .map(|c| c.as_primitive::<Float64Type>())
            .collect();
        let get = |row: usize| -> Option<Vec<f64>> {
            cols.iter()
                .map(|c| (!c.is_null(row)).then(|| c.value(row)))
                .collect()
        };
        let point = |ra: f64, dec: f64| SkyPoint::new(ra, dec).map_err(|e| err(self.name, e));
        let out: ArrayRef = match self.op {
            Op::Distance => Arc::new(
                (0..n)
                    .map(|i| get(i).map(|v| angular_separation_deg(v[0], v[1], v[2], v[3])))
                    .collect::<Float64Array>(),
            ),
            Op::HealpixIndex => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(match get(i) {
                        None => None,
                        Some(v) => {
                            if !(0.0..=29.0).contains(&v[0]) || v[0].fract() != 0.0 {
                                return Err(err(
                                    self.name,
                                    format!("order {} is not an integer in 0..29", v[0]),
                                ));
                            }
                            Some(healpix::hash(v[0] as u8, &point(v[1], v[2])?) as i64)
                        }
                    });
                }
                Arc::new(Int64Array::from(out))
            }
            Op::ContainsCircle | Op::ContainsBox | Op::ContainsPolygon => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let Some(v) = get(i) else {
                        out.push(None);
                        continue;
                    };
                    let p = point(v[0], v[1])?;
                    let inside = match self.op {
                        Op::ContainsCircle => {
                            let c = Circle::new(point(v[2], v[3])?, v[4])
                                .map_err(|e| err(self.name, e))?;
                            Region::Circle(c).contains(&p)
                        }
                        Op::ContainsBox => {
                            let b = SkyBox::new(point(v[2], v[3])?, v[4], v[5])
                                .map_err(|e| err(self.name, e))?;
                            Region::Box(b).contains(&p)
                        }
                        _ => match &constant_polygon {
                            Some(Some(poly)) => poly.contains(&p),
                            Some(None) => {
                                out.push(None);
                                continue;
                            }
                            None => polygon(self.name, &v[2..])?.contains(&p),
                        },
                    };
                    out.push(Some(inside as i32));
                }
                Arc::new(Int32Array::from(out))
            }
            Op::Q3cAng2ipix => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    out.push(match get(i) {
                        None => None,
                        Some(v) => {
                            point(v[0].rem_euclid(360.0), v[1])?;
                            Some(q3c_ang2ipix(v[0], v[1]))
                        }
                    });
                }
                Arc::new(Int64Array::from(out))
            }
            Op::Q3cPoly => unreachable!("handled above"),
            Op::Q3cRadial | Op::Q3cJoin => Arc::new(
                (0..n)
                    .map(|i| get(i).map(|v| angular_separation_deg(v[0], v[1], v[2], v[3]) <= v[4]))
                    .collect::<BooleanArray>(),
            ),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A cone given by literals, the usual case (`CONTAINS(POINT(ra, dec), CIRCLE(...))` and
/// `q3c_radial_query` with constants): its centre is checked once, and most rows are
/// rejected by their declination alone (the separation is at least the difference in
/// declination), so the exact separation is computed only for rows in the cone's band.
struct ConstantCone {
    ra_deg: f64,
    dec_deg: f64,
    radius_deg: f64,
}

impl ConstantCone {
    fn contains(&self, ra_deg: f64, dec_deg: f64) -> bool {
        // The margin (3.6 microarcseconds) leaves rows on the boundary to the exact test.
        (dec_deg - self.dec_deg).abs() <= self.radius_deg + 1e-9
            && angular_separation_deg(ra_deg, dec_deg, self.ra_deg, self.dec_deg) <= self.radius_deg
    }
}

/// The cone of arguments 2..5 when all are non-NULL literals; `None` otherwise (a cone per
/// row, or NULL, which the general path handles). `validate` checks the centre and radius
/// as ADQL does; Q3C takes them as given.
fn constant_cone(
    name: &str,
    args: &[ColumnarValue],
    validate: bool,
) -> Result<Option<ConstantCone>> {
    let mut v = [0.0; 3];
    for (k, a) in args[2..5].iter().enumerate() {
        let ColumnarValue::Scalar(s) = a else {
            return Ok(None);
        };
        match s.cast_to(&DataType::Float64)? {
            datafusion::scalar::ScalarValue::Float64(Some(x)) => v[k] = x,
            _ => return Ok(None),
        }
    }
    if validate {
        let c = Circle::new(SkyPoint::new(v[0], v[1]).map_err(|e| err(name, e))?, v[2])
            .map_err(|e| err(name, e))?;
        v = [c.center().ra_deg(), c.center().dec_deg(), c.radius_deg()];
    }
    Ok(Some(ConstantCone {
        ra_deg: v[0],
        dec_deg: v[1],
        radius_deg: v[2],
    }))
}

impl SpatialUdf {
    /// `adql_contains_circle` (1/0, positions validated as everywhere else) or
    /// `q3c_radial_query` (true/false, positions taken as given, as Q3C does) of `n` rows
    /// against a constant cone.
    fn cone_query(
        &self,
        cone: &ConstantCone,
        args: &[ColumnarValue],
        n: usize,
    ) -> Result<ColumnarValue> {
        let ra = arrow::compute::cast(&args[0].to_array(n)?, &DataType::Float64)?;
        let dec = arrow::compute::cast(&args[1].to_array(n)?, &DataType::Float64)?;
        let (ra, dec) = (
            ra.as_primitive::<Float64Type>(),
            dec.as_primitive::<Float64Type>(),
        );
        let rows = (0..n)
            .map(|i| (!ra.is_null(i) && !dec.is_null(i)).then(|| (ra.value(i), dec.value(i))));
        let out: ArrayRef = if self.op == Op::Q3cRadial {
            Arc::new(
                rows.map(|p| p.map(|(r, d)| cone.contains(r, d)))
                    .collect::<BooleanArray>(),
            )
        } else {
            let mut out = Vec::with_capacity(n);
            for p in rows {
                out.push(match p {
                    None => None,
                    Some((r, d)) => {
                        if !(r.is_finite() && (-90.0..=90.0).contains(&d)) {
                            // The error SkyPoint gives everywhere else.
                            SkyPoint::new(r, d).map_err(|e| err(self.name, e))?;
                        }
                        Some(cone.contains(r, d) as i32)
                    }
                });
            }
            Arc::new(Int32Array::from(out))
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Q3C's pixel of a position (Koposov & Bartunov 2006): the cube face the direction
/// projects onto (0 north cap, 1-4 around the equator, 5 south cap), then the face's
/// gnomonic (x, y) in [-1/2, 1/2] quantised to nside = 2^30 and bit-interleaved (x on even
/// bits, y on odd ones), after face * nside^2. This is the number PostgreSQL's
/// `q3c_ang2ipix(ra, dec)` returns.
pub fn q3c_ang2ipix(ra_deg: f64, dec_deg: f64) -> i64 {
    const NSIDE: i64 = 1 << 30;
    let ra = ra_deg.rem_euclid(360.0);
    let mut face = (((ra + 45.0) / 90.0).floor() as i64) % 4;
    let ra1 = (ra - 90.0 * face as f64).to_radians();
    let dec = dec_deg.to_radians();
    let mut x = ra1.tan();
    let mut y = dec.tan() / ra1.cos();
    if y > 1.0 {
        face = 0;
        let t = 1.0 / dec.tan();
        let r = ra.to_radians();
        x = r.sin() * t;
        y = -r.cos() * t;
    } else if y < -1.0 {
        face = 5;
        let t = 1.0 / dec.tan();
        let r = ra.to_radians();
        x = -r.sin() * t;
        y = -r.cos() * t;
    } else {
        face += 1;
    }
    let quantise = |v: f64| (((v / 2.0 + 0.5) * NSIDE as f64) as i64).clamp(0, NSIDE - 1);
    let (xi, yi) = (quantise(x), quantise(y));
    let mut bits = 0i64;
    for b in 0..30 {
        bits |= ((xi >> b) & 1) << (2 * b);
        bits |= ((yi >> b) & 1) << (2 * b + 1);
    }
    face * NSIDE * NSIDE + bits
}

/// `q3c_poly_query(ra, dec, poly)`: whether (ra, dec) lies in the polygon whose vertices are
/// the array `poly` = [ra1, dec1, ra2, dec2, ...] (Q3C's `ARRAY[...]` argument).
fn q3c_poly_query(name: &str, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
    let n = args.number_rows;
    let arrays = ColumnarValue::values_to_arrays(&args.args)?;
    let ra = arrow::compute::cast(&arrays[0], &DataType::Float64)?;
    let dec = arrow::compute::cast(&arrays[1], &DataType::Float64)?;
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    let poly_at = |i: usize| -> Result<Option<Region>> {
        let a = &arrays[2];
        if a.is_null(i) {
            return Ok(None);
        }
        let values = match a.data_type() {
            DataType::List(_) => a.as_list::<i32>().value(i),
            DataType::LargeList(_) => a.as_list::<i64>().value(i),
            DataType::FixedSizeList(..) => a.as_fixed_size_list().value(i),
            other => {
                return Err(err(
                    name,
                    format!("the polygon must be an array of numbers, not {other}"),
                ));
            }
        };
        let values = arrow::compute::cast(&values, &DataType::Float64)?;
        let v = values.as_primitive::<Float64Type>();
        if v.len() < 6 || v.len() % 2 == 1 || v.null_count() > 0 {
            return Err(err(
                name,
                format!(
                    "the polygon needs an even number (at least 6) of non-NULL coordinates, got {}",
                    v.len()
                ),
            ));
        }
        polygon(name, v.values()).map(Some)
    };
    let constant = matches!(args.args[2], ColumnarValue::Scalar(_));
    let shared = if constant && n > 0 {
        Some(poly_at(0)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let poly = match &shared {
            Some(p) => p.clone(),
            None => poly_at(i)?,
        };
        out.push(match (poly, ra.is_null(i) || dec.is_null(i)) {
            (Some(p), false) => {
                let pt = SkyPoint::new(ra.value(i), dec.value(i)).map_err(|e| err(name, e))?;
                Some(p.contains(&pt))
            }
            _ => None,
        });
    }
    Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
}

/// A polygon region from flat (ra, dec, ...) coordinates; errors name the function.
pub(crate) fn polygon(name: &str, coords: &[f64]) -> Result<Region> {
    let pts = coords
        .chunks(2)
        .map(|c| SkyPoint::new(c[0], c[1]))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| err(name, e))?;
    Ok(Region::Polygon(
        Polygon::new(pts).map_err(|e| err(name, e))?,
    ))
}

/// `adql_contains_moc(ra, dec, moc)`: whether each position lies in a MOC given as its
/// ASCII text (ADQL's `CONTAINS(POINT(ra, dec), MOC('...'))`). The MOC is parsed once per
/// distinct text and kept for the function's life.
#[derive(Debug)]
struct MocUdf {
    signature: Signature,
    parsed: std::sync::Mutex<Option<(String, Arc<meridian_sky::Moc>)>>,
}

impl PartialEq for MocUdf {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MocUdf {}

impl std::hash::Hash for MocUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "adql_contains_moc".hash(state);
    }
}

impl MocUdf {
    fn new() -> Self {
        Self {
            signature: Signature::one_of(
                [
                    DataType::Utf8,
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                ]
                .into_iter()
                .map(|t| TypeSignature::Exact(vec![DataType::Float64, DataType::Float64, t]))
                .collect(),
                Volatility::Immutable,
            ),
            parsed: std::sync::Mutex::new(None),
        }
    }

    fn moc(&self, text: &str) -> Result<Arc<meridian_sky::Moc>> {
        let mut p = self.parsed.lock().expect("MOC cache");
        if let Some((t, m)) = p.as_ref()
            && t == text
        {
            return Ok(m.clone());
        }
        let m = Arc::new(
            meridian_sky::moc_parse(text.as_bytes()).map_err(|e| err("adql_contains_moc", e))?,
        );
        *p = Some((text.to_string(), m.clone()));
        Ok(m)
    }
}

impl ScalarUDFImpl for MocUdf {
    fn name(&self) -> &str {
        "adql_contains_moc"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let ra = arrow::compute::cast(&args.args[0].to_array(n)?, &DataType::Float64)?;
        let dec = arrow::compute::cast(&args.args[1].to_array(n)?, &DataType::Float64)?;
        let (ra, dec) = (
            ra.as_primitive::<Float64Type>(),
            dec.as_primitive::<Float64Type>(),
        );
        // The MOC of each row: a literal is parsed once (never copied row by row); a
        // column (an uploaded MOC, dictionary-encoded) once per distinct value.
        let mocs: Vec<Option<Arc<meridian_sky::Moc>>> = match &args.args[2] {
            ColumnarValue::Scalar(s) => {
                let m = match s {
                    datafusion::scalar::ScalarValue::Utf8(Some(t))
                    | datafusion::scalar::ScalarValue::LargeUtf8(Some(t))
                    | datafusion::scalar::ScalarValue::Utf8View(Some(t)) => Some(self.moc(t)?),
                    datafusion::scalar::ScalarValue::Dictionary(_, v) => match v.as_ref() {
                        datafusion::scalar::ScalarValue::Utf8(Some(t)) => Some(self.moc(t)?),
                        _ => None,
                    },
                    _ => None,
                };
                vec![m; 1]
            }
            ColumnarValue::Array(a) => {
                let (keys, values): (Vec<Option<usize>>, ArrayRef) = match a.data_type() {
                    DataType::Dictionary(_, _) => {
                        let d = a.as_any_dictionary();
                        let keys = arrow::compute::cast(d.keys(), &DataType::Int64)?;
                        let keys = keys
                            .as_primitive::<arrow::datatypes::Int64Type>()
                            .iter()
                            .map(|k| k.map(|k| k as usize))
                            .collect();
                        (keys, d.values().clone())
                    }
                    _ => ((0..n).map(Some).collect(), a.clone()),
                };
                let values = arrow::compute::cast(&values, &DataType::Utf8)?;
                let values = values.as_string::<i32>();
                let mut parsed: Vec<Option<Arc<meridian_sky::Moc>>> = Vec::new();
                let mut last: Option<(usize, Arc<meridian_sky::Moc>)> = None;
                for k in keys {
                    parsed.push(match k {
                        Some(k) if values.is_valid(k) => match &last {
                            Some((lk, m)) if *lk == k => Some(m.clone()),
                            _ => {
                                let m = self.moc(values.value(k))?;
                                last = Some((k, m.clone()));
                                Some(m)
                            }
                        },
                        _ => None,
                    });
                }
                parsed
            }
        };
        let moc_of = |i: usize| if mocs.len() == 1 { &mocs[0] } else { &mocs[i] };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let Some(moc) = moc_of(i) else {
                out.push(None);
                continue;
            };
            if ra.is_null(i) || dec.is_null(i) {
                out.push(None);
                continue;
            }
            let p = SkyPoint::new(ra.value(i), dec.value(i))
                .map_err(|e| err("adql_contains_moc", e))?;
            out.push(Some(
                moc.is_in(p.ra_deg().to_radians(), p.dec_deg().to_radians()) as i32,
            ));
        }
        Ok(ColumnarValue::Array(Arc::new(Int32Array::from(out))))
    }
}

/// Every spatial function, for registration.
pub fn spatial_udfs() -> Vec<ScalarUDF> {
    std::iter::once(ScalarUDF::new_from_impl(MocUdf::new()))
        .chain(spatial_numeric_udfs())
        .collect()
}

fn spatial_numeric_udfs() -> Vec<ScalarUDF> {
    [
        ("adql_distance", Op::Distance),
        ("adql_contains_circle", Op::ContainsCircle),
        ("adql_contains_box", Op::ContainsBox),
        ("adql_contains_polygon", Op::ContainsPolygon),
        ("ivo_healpix_index", Op::HealpixIndex),
        ("q3c_dist", Op::Distance),
        ("q3c_radial_query", Op::Q3cRadial),
        ("q3c_join", Op::Q3cJoin),
        ("q3c_poly_query", Op::Q3cPoly),
        ("q3c_ang2ipix", Op::Q3cAng2ipix),
    ]
    .into_iter()
    .map(|(name, op)| ScalarUDF::new_from_impl(SpatialUdf::new(name, op)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `adql_contains_circle` over positions `ra`, `dec` and a centre and radius given as
    /// literals or as columns.
    fn contains_circle(
        ra: &[Option<f64>],
        dec: &[Option<f64>],
        centre: [f64; 3],
        literal: bool,
    ) -> Result<Int32Array> {
        use arrow::datatypes::Field;
        let n = ra.len();
        let mut args = vec![
            ColumnarValue::Array(Arc::new(Float64Array::from(ra.to_vec()))),
            ColumnarValue::Array(Arc::new(Float64Array::from(dec.to_vec()))),
        ];
        args.extend(centre.map(|v| match literal {
            true => ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Float64(Some(v))),
            false => ColumnarValue::Array(Arc::new(Float64Array::from(vec![v; n]))),
        }));
        let udf = SpatialUdf::new("adql_contains_circle", Op::ContainsCircle);
        let out = udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields: (0..5)
                .map(|k| Arc::new(Field::new(format!("a{k}"), DataType::Float64, true)))
                .collect(),
            number_rows: n,
            return_field: Arc::new(Field::new("r", DataType::Int32, true)),
            config_options: Arc::default(),
        })?;
        Ok(out
            .to_array(n)?
            .as_primitive::<arrow::datatypes::Int32Type>()
            .clone())
    }

    /// The constant-cone path gives exactly what the per-row path (a cone per row, as in a
    /// join) gives, including rows on and near the boundary and NULLs.
    #[test]
    fn constant_cone_agrees_with_the_per_row_path() {
        use rand::{Rng, SeedableRng};
        let (ra0, dec0, r) = (359.99, 89.2, 0.9);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (mut ra, mut dec): (Vec<_>, Vec<_>) = (0..20_000)
            .map(|_| {
                (
                    Some(rng.random_range(0.0..360.0)),
                    Some(rng.random_range(88.0..=90.0)),
                )
            })
            .unzip();
        // On the boundary on both sides of the pole, the pole itself, and a NULL.
        for p in [
            (ra0, dec0 - r),
            (ra0 - 180.0, 90.0 - (r - (90.0 - dec0))),
            (0.0, 90.0),
        ] {
            ra.push(Some(p.0));
            dec.push(Some(p.1));
        }
        ra.push(None);
        dec.push(Some(0.0));
        let n = ra.len();
        let constant = contains_circle(&ra, &dec, [ra0, dec0, r], true).unwrap();
        let per_row = contains_circle(&ra, &dec, [ra0, dec0, r], false).unwrap();
        assert_eq!(constant, per_row);
        let inside = constant.iter().flatten().filter(|v| *v == 1).count();
        assert!(inside > 1000 && inside < n - 1000, "{inside} of {n} inside");
        assert!(constant.is_null(n - 1));
        // A position off the sphere is an error naming it, as on the per-row path.
        ra.push(Some(10.0));
        dec.push(Some(95.0));
        for literal in [true, false] {
            let e = contains_circle(&ra, &dec, [ra0, dec0, r], literal)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("adql_contains_circle") && e.contains("Dec 95"),
                "{e}"
            );
        }
    }

    #[test]
    fn q3c_pixels_match_published_values() {
        // Values that Q3C's reference implementation returns at its default depth.
        assert_eq!(q3c_ang2ipix(0.0, 0.0), 2017612633061982208);
        assert_eq!(q3c_ang2ipix(359.0, 0.0), 1825388318008017157);
        assert_eq!(q3c_ang2ipix(-1.0, 0.0), 1825388318008017157);
        assert_eq!(q3c_ang2ipix(0.0, -90.0), 6629298651489370112);
    }
}

/// `healpix_parent(hpx29, order)`: the NESTED cell at `order` holding the order-29 cell
/// `hpx29` (a catalog's `_healpix_29`), i.e. `hpx29 >> 2 (29 - order)`. It is monotonic in
/// its first argument, and says so: over catalogs sorted by `_healpix_29`, a GROUP BY on it
/// streams in order instead of hashing.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HealpixParent {
    signature: Signature,
}

impl ScalarUDFImpl for HealpixParent {
    fn name(&self) -> &str {
        "healpix_parent"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let hpx = arrays[0].as_primitive::<arrow::datatypes::Int64Type>();
        let order = arrays[1].as_primitive::<arrow::datatypes::Int64Type>();
        let mut out = Vec::with_capacity(hpx.len());
        for i in 0..hpx.len() {
            if hpx.is_null(i) || order.is_null(i) {
                out.push(None);
                continue;
            }
            let k = order.value(i);
            if !(0..=29).contains(&k) {
                return Err(err("healpix_parent", format!("order {k} is not in 0..29")));
            }
            out.push(Some(hpx.value(i) >> (2 * (29 - k))));
        }
        Ok(ColumnarValue::Array(Arc::new(Int64Array::from(out))))
    }

    fn output_ordering(
        &self,
        inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
    ) -> Result<datafusion::logical_expr::sort_properties::SortProperties> {
        use datafusion::logical_expr::sort_properties::SortProperties;
        Ok(match inputs[1].sort_properties {
            SortProperties::Singleton => inputs[0].sort_properties,
            _ => SortProperties::Unordered,
        })
    }
}

/// The HEALPix helper functions over the order-29 index column.
pub fn healpix_udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(HealpixParent {
        signature: Signature::exact(
            vec![DataType::Int64, DataType::Int64],
            Volatility::Immutable,
        ),
    })]
}
