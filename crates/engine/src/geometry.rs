//! Geometry values in query results, as DALI serializes them: a POINT is `double[2]`
//! (xtype "point"), a CIRCLE `double[3]` ("circle"), a POLYGON (and a BOX, as its four
//! corners) `double[*]` ("polygon"), all in degrees. Results carry the xtype in the Arrow
//! field metadata so the writers can declare it. AREA (square degrees), CENTROID and
//! COORD1/COORD2 work on these values.
//!
//! | name | arguments (degrees) | result |
//! |---|---|---|
//! | `adql_point` | ra, dec | point |
//! | `adql_circle` | ra, dec, radius | circle |
//! | `adql_box` | ra, dec, width, height | polygon |
//! | `adql_polygon` | ra1, dec1, ra2, dec2, ... | polygon |
//! | `adql_area_circle`, `adql_area_box`, `adql_area_polygon` | as the shape | deg² |
//! | `adql_centroid_polygon` | as the shape | point |
//! | `adql_coord1`, `adql_coord2` | point | degrees |

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array, Float64Builder, ListBuilder,
};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility,
};
use meridian_sky::{Circle, Region, SkyBox, SkyPoint};

use crate::udf::{err, polygon};

/// Field metadata key of the DALI xtype.
pub const XTYPE: &str = "xtype";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Point,
    Circle,
    Box,
    Polygon,
    AreaCircle,
    AreaBox,
    AreaPolygon,
    CentroidPolygon,
    Coord1,
    Coord2,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct GeometryUdf {
    name: &'static str,
    op: Op,
    signature: Signature,
}

fn uniform(n: usize) -> TypeSignature {
    TypeSignature::Uniform(n, vec![DataType::Float64])
}

fn polygon_args() -> TypeSignature {
    TypeSignature::OneOf((3..=64).map(|n| uniform(2 * n)).collect())
}

/// The Arrow type of DALI `double[n]` (fixed) or `double[*]`.
pub fn doubles(n: Option<i32>) -> DataType {
    let item = Arc::new(Field::new("item", DataType::Float64, true));
    match n {
        Some(n) => DataType::FixedSizeList(item, n),
        None => DataType::List(item),
    }
}

impl GeometryUdf {
    fn new(name: &'static str, op: Op) -> Self {
        let sig = match op {
            Op::Point => uniform(2),
            Op::Circle | Op::AreaCircle => uniform(3),
            Op::Box | Op::AreaBox => uniform(4),
            Op::Polygon | Op::AreaPolygon | Op::CentroidPolygon => polygon_args(),
            Op::Coord1 | Op::Coord2 => TypeSignature::Any(1),
        };
        Self {
            name,
            op,
            signature: Signature::new(sig, Volatility::Immutable),
        }
    }

    fn output(&self) -> (DataType, Option<&'static str>) {
        match self.op {
            Op::Point | Op::CentroidPolygon => (doubles(Some(2)), Some("point")),
            Op::Circle => (doubles(Some(3)), Some("circle")),
            Op::Box | Op::Polygon => (doubles(None), Some("polygon")),
            Op::AreaCircle | Op::AreaBox | Op::AreaPolygon | Op::Coord1 | Op::Coord2 => {
                (DataType::Float64, None)
            }
        }
    }

    fn region(&self, v: &[f64]) -> Result<Region> {
        let point = |i: usize| SkyPoint::new(v[i], v[i + 1]).map_err(|e| err(self.name, e));
        Ok(match self.op {
            Op::Circle | Op::AreaCircle => {
                Region::Circle(Circle::new(point(0)?, v[2]).map_err(|e| err(self.name, e))?)
            }
            Op::Box | Op::AreaBox => {
                Region::Box(SkyBox::new(point(0)?, v[2], v[3]).map_err(|e| err(self.name, e))?)
            }
            _ => polygon(self.name, v)?,
        })
    }
}

impl ScalarUDFImpl for GeometryUdf {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.output().0)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let (t, xtype) = self.output();
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        let mut f = Field::new(self.name, t, nullable);
        if let Some(x) = xtype {
            f = f.with_metadata(HashMap::from([(XTYPE.to_string(), x.to_string())]));
        }
        Ok(Arc::new(f))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        if matches!(self.op, Op::Coord1 | Op::Coord2) {
            let k = if self.op == Op::Coord1 { 0 } else { 1 };
            let a = &arrays[0];
            let out: Float64Array = match a.data_type() {
                DataType::FixedSizeList(_, 2) => {
                    let l = a.as_fixed_size_list();
                    let values = arrow::compute::cast(l.values(), &DataType::Float64)?;
                    let values = values.as_primitive::<Float64Type>();
                    (0..n)
                        .map(|i| (!l.is_null(i)).then(|| values.value(2 * i + k)))
                        .collect()
                }
                other => {
                    return Err(err(
                        self.name,
                        format!("the argument must be a POINT, not {other}"),
                    ));
                }
            };
            return Ok(ColumnarValue::Array(Arc::new(out)));
        }
        let cols: Vec<ArrayRef> = arrays
            .iter()
            .map(|a| arrow::compute::cast(a, &DataType::Float64))
            .collect::<std::result::Result<_, _>>()?;
        let cols: Vec<&Float64Array> = cols.iter().map(|c| c.as_primitive()).collect();
        let row = |i: usize| -> Option<Vec<f64>> {
            cols.iter()
                .map(|c| (!c.is_null(i)).then(|| c.value(i)))
                .collect()
        };
        let out: ArrayRef = match self.op {
            Op::Point | Op::Circle | Op::CentroidPolygon => {
                let width = if self.op == Op::Circle { 3 } else { 2 };
                let mut values = Float64Builder::with_capacity(n * width);
                let mut valid = Vec::with_capacity(n);
                for i in 0..n {
                    match row(i) {
                        Some(v) => {
                            let out: Vec<f64> = match self.op {
                                Op::Point => {
                                    SkyPoint::new(v[0], v[1]).map_err(|e| err(self.name, e))?;
                                    v
                                }
                                Op::Circle => {
                                    self.region(&v)?;
                                    v
                                }
                                _ => {
                                    let c = self.region(&v)?.centroid();
                                    vec![c.ra_deg(), c.dec_deg()]
                                }
                            };
                            values.append_slice(&out);
                            valid.push(true);
                        }
                        None => {
                            values.append_nulls(width);
                            valid.push(false);
                        }
                    }
                }
                Arc::new(FixedSizeListArray::try_new(
                    Arc::new(Field::new("item", DataType::Float64, true)),
                    width as i32,
                    Arc::new(values.finish()),
                    Some(valid.into()),
                )?)
            }
            Op::Box | Op::Polygon => {
                let mut b = ListBuilder::new(Float64Builder::new())
                    .with_field(Arc::new(Field::new("item", DataType::Float64, true)));
                for i in 0..n {
                    match row(i) {
                        Some(v) => {
                            let r = self.region(&v)?;
                            let vertices = match &r {
                                Region::Box(bx) => bx.as_polygon().vertices().to_vec(),
                                Region::Polygon(p) => p.vertices().to_vec(),
                                _ => unreachable!("box or polygon"),
                            };
                            for p in vertices {
                                b.values().append_value(p.ra_deg());
                                b.values().append_value(p.dec_deg());
                            }
                            b.append(true);
                        }
                        None => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            Op::AreaCircle | Op::AreaBox | Op::AreaPolygon => Arc::new(
                (0..n)
                    .map(|i| {
                        row(i)
                            .map(|v| self.region(&v).map(|r| r.area_deg2()))
                            .transpose()
                    })
                    .collect::<Result<Float64Array>>()?,
            ),
            Op::Coord1 | Op::Coord2 => unreachable!("handled above"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Every geometry-value function, for registration.
pub fn geometry_udfs() -> Vec<ScalarUDF> {
    [
        ("adql_point", Op::Point),
        ("adql_circle", Op::Circle),
        ("adql_box", Op::Box),
        ("adql_polygon", Op::Polygon),
        ("adql_area_circle", Op::AreaCircle),
        ("adql_area_box", Op::AreaBox),
        ("adql_area_polygon", Op::AreaPolygon),
        ("adql_centroid_polygon", Op::CentroidPolygon),
        ("adql_coord1", Op::Coord1),
        ("adql_coord2", Op::Coord2),
    ]
    .into_iter()
    .map(|(name, op)| ScalarUDF::new_from_impl(GeometryUdf::new(name, op)))
    .collect()
}
