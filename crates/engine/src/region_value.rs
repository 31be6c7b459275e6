//! CONTAINS and INTERSECTS where one side is a geometry *value* rather than a literal
//! shape: a polygon column such as ObsCore's `s_region`, a point column, or a geometry
//! function's result. One function, `adql_region_meets(value, mode, shape, coords...)`,
//! decides per row by the value's type:
//!
//! | value | `intersects` | `contains` (value inside shape) | `holds` (point inside value) |
//! |---|---|---|---|
//! | POINT `double[2]` | point inside shape | point inside shape | points equal |
//! | CIRCLE `double[3]` | — | — | point inside circle |
//! | POLYGON `double[*]` | they share a point | every vertex inside shape | point inside polygon |
//!
//! `shape` is `circle`, `box`, `polygon` or `point`, with its coordinates in degrees. For
//! `contains`, a polygon is inside a convex shape when its vertices are (its edges are
//! great-circle arcs), which holds for circles under 90 degrees, boxes and convex
//! polygons. The result is 1 or 0 (ADQL's CONTAINS and INTERSECTS), NULL for a NULL value.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use meridian_sky::{Circle, Polygon, Region, SkyBox, SkyPoint};

use crate::udf::err;

const NAME: &str = "adql_region_meets";

#[derive(Debug, PartialEq, Eq, Hash)]
struct RegionMeets {
    signature: Signature,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Intersects,
    Contains,
    Holds,
}

/// The literal shape a value is tested against.
pub(crate) enum Shape {
    Region(Region),
    Point(SkyPoint),
}

fn text(a: &ColumnarValue) -> Result<String> {
    match a {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
        _ => Err(err(NAME, "mode and shape must be text literals")),
    }
}

fn number(a: &ColumnarValue) -> Result<Option<f64>> {
    match a {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Float64)? {
            ScalarValue::Float64(v) => Ok(v),
            _ => Ok(None),
        },
        ColumnarValue::Array(_) => Err(err(
            NAME,
            "the shape's coordinates must be constants (a shape per row is not supported)",
        )),
    }
}

fn point(v: f64, w: f64) -> Result<SkyPoint> {
    SkyPoint::new(v.rem_euclid(360.0), w).map_err(|e| err(NAME, e))
}

fn polygon_of(v: &[f64]) -> Result<Polygon> {
    if v.len() < 6 || v.len() % 2 == 1 {
        return Err(err(
            NAME,
            format!(
                "a polygon needs at least 3 vertices, got {} numbers",
                v.len()
            ),
        ));
    }
    let pts = v
        .chunks(2)
        .map(|c| point(c[0], c[1]))
        .collect::<Result<Vec<_>>>()?;
    Polygon::new(pts).map_err(|e| err(NAME, e))
}

pub(crate) fn shape_of(kind: &str, v: &[f64]) -> Result<Shape> {
    let need = |n: usize| {
        if v.len() == n {
            Ok(())
        } else {
            Err(err(
                NAME,
                format!("a {kind} takes {n} numbers, got {}", v.len()),
            ))
        }
    };
    Ok(match kind {
        "point" => {
            need(2)?;
            Shape::Point(point(v[0], v[1])?)
        }
        "circle" => {
            need(3)?;
            Shape::Region(Region::Circle(
                Circle::new(point(v[0], v[1])?, v[2]).map_err(|e| err(NAME, e))?,
            ))
        }
        "box" => {
            need(4)?;
            Shape::Region(Region::Box(
                SkyBox::new(point(v[0], v[1])?, v[2], v[3]).map_err(|e| err(NAME, e))?,
            ))
        }
        "polygon" => Shape::Region(Region::Polygon(polygon_of(v)?)),
        other => return Err(err(NAME, format!("unknown shape '{other}'"))),
    })
}

/// The literal shape of an `adql_region_meets(column, mode, kind, coords...)` filter on
/// `column` (bare, or `= 1`), for tables that can skip rows far from it.
pub(crate) fn filter_shape(e: &datafusion::logical_expr::Expr, column: &str) -> Option<Shape> {
    use datafusion::logical_expr::Expr;
    let (f, bound) = crate::hats_table::spatial_call(e)?;
    if f.func.name() != NAME || bound.is_some() || f.args.len() < 4 {
        return None;
    }
    if !matches!(&f.args[0], Expr::Column(c) if c.name == column) {
        return None;
    }
    let kind = match &f.args[2] {
        Expr::Literal(ScalarValue::Utf8(Some(k)), _) => k.as_str(),
        _ => return None,
    };
    let coords: Option<Vec<f64>> = f.args[3..].iter().map(crate::hats_table::number).collect();
    shape_of(kind, &coords?).ok()
}

impl RegionMeets {
    fn test(&self, mode: Mode, shape: &Shape, value: &[f64], width: Option<i32>) -> Result<bool> {
        let is_point = width == Some(2);
        let is_circle = width == Some(3);
        match (mode, shape) {
            (Mode::Holds, Shape::Point(p)) => Ok(if is_point {
                point(value[0], value[1])?.separation_deg(p) == 0.0
            } else if is_circle {
                point(value[0], value[1])?.separation_deg(p) <= value[2]
            } else {
                Region::Polygon(polygon_of(value)?).contains(p)
            }),
            (Mode::Intersects | Mode::Contains, Shape::Region(r)) => {
                if is_point {
                    return Ok(r.contains(&point(value[0], value[1])?));
                }
                if is_circle {
                    return Err(err(
                        NAME,
                        "a CIRCLE value is only supported as the region that contains a POINT",
                    ));
                }
                let poly = polygon_of(value)?;
                Ok(match mode {
                    Mode::Intersects => r.intersects_polygon(&poly),
                    _ => poly.vertices().iter().all(|v| r.contains(v)),
                })
            }
            _ => Err(err(NAME, "this mode and shape do not go together")),
        }
    }
}

impl ScalarUDFImpl for RegionMeets {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let a = &args.args;
        if a.len() < 4 {
            return Err(err(
                NAME,
                "takes a value, a mode, a shape and its coordinates",
            ));
        }
        let mode = match text(&a[1])?.as_str() {
            "intersects" => Mode::Intersects,
            "contains" => Mode::Contains,
            "holds" => Mode::Holds,
            other => return Err(err(NAME, format!("unknown mode '{other}'"))),
        };
        let coords: Option<Vec<f64>> = a[3..]
            .iter()
            .map(number)
            .collect::<Result<Vec<Option<f64>>>>()?
            .into_iter()
            .collect();
        let Some(coords) = coords else {
            return Ok(ColumnarValue::Scalar(ScalarValue::Int32(None)));
        };
        let shape = shape_of(&text(&a[2])?, &coords)?;
        let values = a[0].to_array(n)?;
        let width = match values.data_type() {
            DataType::FixedSizeList(_, w) => Some(*w),
            DataType::List(_) | DataType::LargeList(_) => None,
            other => {
                return Err(err(
                    NAME,
                    format!("the value must be a POINT, CIRCLE or POLYGON, not {other}"),
                ));
            }
        };
        let row = |i: usize| -> Result<Option<Vec<f64>>> {
            if values.is_null(i) {
                return Ok(None);
            }
            let v: ArrayRef = match values.data_type() {
                DataType::FixedSizeList(..) => values.as_fixed_size_list().value(i),
                DataType::LargeList(_) => values.as_list::<i64>().value(i),
                _ => values.as_list::<i32>().value(i),
            };
            let v = arrow::compute::cast(&v, &DataType::Float64)?;
            let v = v.as_primitive::<Float64Type>();
            if v.null_count() > 0 {
                return Ok(None);
            }
            Ok(Some(v.values().to_vec()))
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(match row(i)? {
                None => None,
                Some(v) => Some(self.test(mode, &shape, &v, width)? as i32),
            });
        }
        Ok(ColumnarValue::Array(Arc::new(Int32Array::from(out))))
    }
}

/// The function, for registration.
pub fn region_udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(RegionMeets {
        signature: Signature::new(TypeSignature::VariadicAny, Volatility::Immutable),
    })]
}
