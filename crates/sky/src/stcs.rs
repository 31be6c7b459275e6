//! The STC-S subset that ADQL's REGION and TAP clients use (TAP 1.0 / ADQL 2.0 Sect. 6 and
//! the DALI shapes): `Position`, `Circle`, `Box` and `Polygon`, with an optional frame
//! (ICRS, FK5, J2000, GALACTIC is refused), reference position and flavor, in degrees.
//! Compound regions (Union, Intersection, Not) are refused with a clear message.

use crate::{Circle, Error, Polygon, Region, Result, SkyBox, SkyPoint};

/// A parsed STC-S shape.
#[derive(Debug, Clone)]
pub enum Shape {
    /// `Position ra dec`.
    Point(SkyPoint),
    /// `Circle`, `Box` or `Polygon`.
    Region(Region),
}

const FRAMES: [&str; 5] = ["ICRS", "FK5", "J2000", "UNKNOWNFRAME", "FK4"];
const REFPOS: [&str; 9] = [
    "GEOCENTER",
    "BARYCENTER",
    "HELIOCENTER",
    "TOPOCENTER",
    "LSR",
    "LSRK",
    "LSRD",
    "UNKNOWNREFPOS",
    "RELOCATABLE",
];

/// Parses an STC-S region string.
pub fn parse_stcs(text: &str) -> Result<Shape> {
    let err = |m: String| Error::Region(format!("STC-S '{}': {m}", text.trim()));
    let mut words = text.split_whitespace().peekable();
    let kind = words
        .next()
        .ok_or_else(|| err("empty region".into()))?
        .to_ascii_uppercase();
    if matches!(
        kind.as_str(),
        "UNION" | "INTERSECTION" | "NOT" | "DIFFERENCE"
    ) {
        return Err(err(format!("compound regions ({kind}) are not supported")));
    }
    // Frame, reference position and flavor are optional words before the numbers.
    while let Some(w) = words.peek() {
        let up = w.to_ascii_uppercase();
        if FRAMES.contains(&up.as_str()) || REFPOS.contains(&up.as_str()) || up == "SPHERICAL2" {
            if up == "FK4" {
                return Err(err("frame FK4 is not supported; use ICRS".into()));
            }
            words.next();
        } else if up == "GALACTIC" || up == "ECLIPTIC" || up.starts_with("GALACTIC") {
            return Err(err(format!("frame {w} is not supported; use ICRS")));
        } else {
            break;
        }
    }
    let nums: Vec<f64> = words
        .map(|w| {
            w.parse::<f64>()
                .map_err(|_| err(format!("'{w}' is not a number")))
        })
        .collect::<Result<_>>()?;
    let point = |i: usize| SkyPoint::new(nums[i], nums[i + 1]);
    let need = |n: usize| {
        if nums.len() == n {
            Ok(())
        } else {
            Err(err(format!("{kind} takes {n} numbers, got {}", nums.len())))
        }
    };
    Ok(match kind.as_str() {
        "POSITION" => {
            need(2)?;
            Shape::Point(point(0)?)
        }
        "CIRCLE" => {
            need(3)?;
            Shape::Region(Region::Circle(Circle::new(point(0)?, nums[2])?))
        }
        "BOX" => {
            need(4)?;
            Shape::Region(Region::Box(SkyBox::new(point(0)?, nums[2], nums[3])?))
        }
        "POLYGON" => {
            if nums.len() < 6 || !nums.len().is_multiple_of(2) {
                return Err(err(format!(
                    "POLYGON takes an even number (at least 6) of numbers, got {}",
                    nums.len()
                )));
            }
            let pts = (0..nums.len())
                .step_by(2)
                .map(point)
                .collect::<Result<Vec<_>>>()?;
            Shape::Region(Region::Polygon(Polygon::new(pts)?))
        }
        other => return Err(err(format!("unknown shape '{other}'"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let Shape::Region(Region::Circle(c)) =
            parse_stcs("Circle ICRS GEOCENTER 10 20 0.5").unwrap()
        else {
            panic!()
        };
        assert_eq!((c.center().ra_deg(), c.radius_deg()), (10.0, 0.5));
        assert!(matches!(
            parse_stcs("position 1 2").unwrap(),
            Shape::Point(_)
        ));
        assert!(matches!(
            parse_stcs("BOX ICRS 10 10 1 2").unwrap(),
            Shape::Region(Region::Box(_))
        ));
        assert!(matches!(
            parse_stcs("Polygon ICRS 10 10 11 10 11 11").unwrap(),
            Shape::Region(Region::Polygon(_))
        ));
        for (bad, why) in [
            ("", "empty"),
            ("Circle ICRS 10 20", "takes 3 numbers"),
            ("Circle GALACTIC 10 20 1", "not supported"),
            ("Union ICRS (Circle 1 2 3)", "not supported"),
            ("Ellipse 1 2 3 4 5", "unknown shape"),
            ("Circle ICRS 10 x 1", "not a number"),
            ("Circle ICRS 10 95 1", "invalid coordinate"),
        ] {
            let e = parse_stcs(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
