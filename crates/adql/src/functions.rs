//! Functions known to a query: ADQL's built-ins and the user-defined functions a service
//! declares (TAPRegExt `languageFeatures` of type `ivo://ivoa.net/std/TAPRegExt#features-udf`).

use std::collections::BTreeMap;

/// The kind of value an expression has, as far as ADQL's grammar distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A number.
    Numeric,
    /// A character string.
    String,
    /// A geometry (POINT, CIRCLE, BOX, POLYGON, REGION).
    Geometry,
    /// A truth value (a predicate).
    Boolean,
    /// Not known without the schema (a column) or any (COALESCE, NULL).
    Any,
}

/// A function signature: argument count bounds and result kind.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSig {
    /// Fewest arguments.
    pub min_args: usize,
    /// Most arguments (`usize::MAX` for variadic).
    pub max_args: usize,
    /// Kind of the result.
    pub returns: Kind,
    /// Kind of every argument, when they must all be of one kind.
    pub args: Option<Kind>,
    /// An aggregate function.
    pub aggregate: bool,
    /// Declared by the service rather than ADQL itself.
    pub user_defined: bool,
}

/// The functions a query may call, by upper-case name.
#[derive(Debug, Clone)]
pub struct FunctionRegistry {
    functions: BTreeMap<String, FunctionSig>,
}

fn sig(min: usize, max: usize, returns: Kind, args: Option<Kind>) -> FunctionSig {
    FunctionSig {
        min_args: min,
        max_args: max,
        returns,
        args,
        aggregate: false,
        user_defined: false,
    }
}

impl Default for FunctionRegistry {
    fn default() -> Self {
        Self::adql()
    }
}

impl FunctionRegistry {
    /// ADQL 2.1's built-in functions only.
    pub fn adql() -> Self {
        use Kind::*;
        let mut f = BTreeMap::new();
        for n in [
            "ABS", "CEILING", "DEGREES", "EXP", "FLOOR", "LOG", "LOG10", "RADIANS", "SQRT", "SIN",
            "COS", "TAN", "COT", "ASIN", "ACOS", "ATAN",
        ] {
            f.insert(n.to_string(), sig(1, 1, Numeric, Some(Numeric)));
        }
        for n in ["MOD", "POWER", "ATAN2"] {
            f.insert(n.to_string(), sig(2, 2, Numeric, Some(Numeric)));
        }
        f.insert("PI".into(), sig(0, 0, Numeric, None));
        f.insert("RAND".into(), sig(0, 1, Numeric, Some(Numeric)));
        f.insert("ROUND".into(), sig(1, 2, Numeric, Some(Numeric)));
        f.insert("TRUNCATE".into(), sig(1, 2, Numeric, Some(Numeric)));
        for n in ["AVG", "SUM"] {
            f.insert(
                n.into(),
                FunctionSig {
                    aggregate: true,
                    ..sig(1, 1, Numeric, Some(Numeric))
                },
            );
        }
        for n in ["MIN", "MAX"] {
            f.insert(
                n.into(),
                FunctionSig {
                    aggregate: true,
                    ..sig(1, 1, Any, None)
                },
            );
        }
        f.insert(
            "COUNT".into(),
            FunctionSig {
                aggregate: true,
                ..sig(1, 1, Numeric, None)
            },
        );
        // Geometry constructors: argument shapes are checked in validation.
        f.insert("POINT".into(), sig(2, 3, Geometry, None));
        f.insert("CIRCLE".into(), sig(2, 4, Geometry, None));
        f.insert("BOX".into(), sig(3, 5, Geometry, None));
        f.insert("POLYGON".into(), sig(3, usize::MAX, Geometry, None));
        f.insert("REGION".into(), sig(1, 1, Geometry, Some(String)));
        // Meridian's extension: a MOC 2.0 coverage (ASCII or JSON text) as a region.
        f.insert("MOC".into(), sig(1, 1, Geometry, Some(String)));
        f.insert("CENTROID".into(), sig(1, 1, Geometry, Some(Geometry)));
        for n in ["CONTAINS", "INTERSECTS"] {
            f.insert(n.into(), sig(2, 2, Numeric, Some(Geometry)));
        }
        f.insert("DISTANCE".into(), sig(2, 4, Numeric, None));
        f.insert("AREA".into(), sig(1, 1, Numeric, Some(Geometry)));
        f.insert("COORD1".into(), sig(1, 1, Numeric, Some(Geometry)));
        f.insert("COORD2".into(), sig(1, 1, Numeric, Some(Geometry)));
        f.insert("COORDSYS".into(), sig(1, 1, String, Some(Geometry)));
        f.insert("LOWER".into(), sig(1, 1, String, Some(String)));
        f.insert("UPPER".into(), sig(1, 1, String, Some(String)));
        f.insert("IN_UNIT".into(), sig(2, 2, Numeric, None));
        f.insert("COALESCE".into(), sig(1, usize::MAX, Any, None));
        f.insert("NULLIF".into(), sig(2, 2, Any, None));
        Self { functions: f }
    }

    /// Declares a user-defined function.
    pub fn declare(
        &mut self,
        name: &str,
        min_args: usize,
        max_args: usize,
        returns: Kind,
    ) -> &mut Self {
        self.functions.insert(
            name.to_ascii_uppercase(),
            FunctionSig {
                user_defined: true,
                ..sig(min_args, max_args, returns, None)
            },
        );
        self
    }

    /// The signature of a function, by name in any case.
    pub fn get(&self, name: &str) -> Option<&FunctionSig> {
        self.functions.get(&name.to_ascii_uppercase())
    }

    /// All names, for suggestions and TAP capabilities.
    pub fn names(&self) -> impl Iterator<Item = (&str, &FunctionSig)> {
        self.functions.iter().map(|(k, v)| (k.as_str(), v))
    }
}
