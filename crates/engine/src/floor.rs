//! `FLOOR` over floating-point columns in plain SSE2 arithmetic.
//!
//! DataFusion's `floor` calls `f64::floor` per row. On the baseline x86-64 target (no
//! SSE4.1 `roundsd`) that is a call to the software floor of `compiler_builtins`, several
//! times slower than the arithmetic below, which compiles to vector adds, compares and
//! selects; a grouping such as `GROUP BY FLOOR(dec)` spends a noticeable part of its scan
//! there. The session's `floor` is DataFusion's with that kernel for `DOUBLE` and `REAL`
//! arrays; scalars, decimals, integers, simplification and ordering stay DataFusion's.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::Result;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// `floor(x)` for every `f64`: integral values, infinities and NaN unchanged, the sign of
/// zero kept (`floor(-0.0)` is `-0.0`, `floor(-0.5)` is `-1.0`).
#[inline]
pub fn floor_f64(x: f64) -> f64 {
    // From 2^52 up every double is an integer. Below, adding and subtracting 2^52 (with
    // x's sign) rounds x to an integer; a result above x is one too high.
    const INTEGRAL: f64 = 4_503_599_627_370_496.0;
    let m = INTEGRAL.copysign(x);
    let r = (x + m) - m;
    let r = if r > x { r - 1.0 } else { r };
    if x.abs() < INTEGRAL { r.copysign(x) } else { x }
}

/// [`floor_f64`] for `f32` (integral from 2^23).
#[inline]
pub fn floor_f32(x: f32) -> f32 {
    const INTEGRAL: f32 = 8_388_608.0;
    let m = INTEGRAL.copysign(x);
    let r = (x + m) - m;
    let r = if r > x { r - 1.0 } else { r };
    if x.abs() < INTEGRAL { r.copysign(x) } else { x }
}

/// DataFusion's `floor` with the kernels above for float arrays.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Floor {
    inner: Arc<ScalarUDF>,
}

/// The session's `floor`, wrapping DataFusion's `inner`.
pub(crate) fn floor_udf(inner: Arc<ScalarUDF>) -> ScalarUDF {
    ScalarUDF::new_from_impl(Floor { inner })
}

impl ScalarUDFImpl for Floor {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.inner().aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.inner().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [ColumnarValue::Array(a)] = args.args.as_slice() {
            match a.data_type() {
                DataType::Float64 => {
                    let out = a
                        .as_primitive::<Float64Type>()
                        .unary::<_, Float64Type>(floor_f64);
                    return Ok(ColumnarValue::Array(Arc::new(out)));
                }
                DataType::Float32 => {
                    let out = a
                        .as_primitive::<Float32Type>()
                        .unary::<_, Float32Type>(floor_f32);
                    return Ok(ColumnarValue::Array(Arc::new(out)));
                }
                _ => {}
            }
        }
        self.inner.inner().invoke_with_args(args)
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(input)
    }

    fn evaluate_bounds(&self, inputs: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(inputs)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_equals_the_library_floor_bit_for_bit() {
        let mut unit = crate::test_uniform(3);
        let mut xs = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4_503_599_627_370_495.5,
            -4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            9_007_199_254_740_993.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for _ in 0..200_000 {
            let scale = 10f64.powi((unit() * 36.0) as i32 - 18);
            xs.push((unit() - 0.5) * scale);
            xs.push(f64::from_bits((unit() * u64::MAX as f64) as u64));
        }
        for x in xs.into_iter().filter(|x| !x.is_nan()) {
            assert_eq!(floor_f64(x).to_bits(), x.floor().to_bits(), "floor({x:e})");
            let y = x as f32;
            assert_eq!(floor_f32(y).to_bits(), y.floor().to_bits(), "floor({y:e})");
        }
        assert!(floor_f64(f64::NAN).is_nan());
        assert!(floor_f32(f32::NAN).is_nan());
    }
}
