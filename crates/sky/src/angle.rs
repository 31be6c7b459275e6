//! Angles written with their unit, as users type them: `1.5arcsec`, `2"`, `0.5 arcmin`,
//! `3'`, `0.01deg`, `10mas`.

use crate::{Error, Result};

/// Parses an angle with a unit into degrees. The unit is required: a bare number is
/// ambiguous between arcseconds and degrees.
pub fn parse_angle_deg(text: &str) -> Result<f64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| {
        Error::Coordinate(format!(
            "'{text}' is not an angle: expected a number and a unit"
        ))
    })?;
    let per_deg = match unit.trim().to_ascii_lowercase().as_str() {
        "deg" | "d" | "degree" | "degrees" | "°" => 1.0,
        "arcmin" | "amin" | "'" | "m" => 60.0,
        "arcsec" | "asec" | "\"" | "s" => 3600.0,
        "mas" => 3.6e6,
        "" => {
            return Err(Error::Coordinate(format!(
                "'{text}' has no unit: write e.g. 1.5arcsec, 0.5arcmin or 0.01deg"
            )));
        }
        u => {
            return Err(Error::Coordinate(format!(
                "'{text}': unknown angle unit '{u}' (use deg, arcmin, arcsec or mas)"
            )));
        }
    };
    let deg = value / per_deg;
    if !deg.is_finite() || deg < 0.0 {
        return Err(Error::Coordinate(format!(
            "'{text}' is not a non-negative finite angle"
        )));
    }
    Ok(deg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_angle_deg("1.5arcsec").unwrap(), 1.5 / 3600.0);
        assert_eq!(parse_angle_deg("3\"").unwrap(), 3.0 / 3600.0);
        assert_eq!(parse_angle_deg("0.5 arcmin").unwrap(), 0.5 / 60.0);
        assert_eq!(parse_angle_deg("2'").unwrap(), 2.0 / 60.0);
        assert_eq!(parse_angle_deg("0.01deg").unwrap(), 0.01);
        assert_eq!(parse_angle_deg("10mas").unwrap(), 10.0 / 3.6e6);
        assert_eq!(parse_angle_deg("1e-3deg").unwrap(), 1e-3);
        assert!(
            parse_angle_deg("1.5")
                .unwrap_err()
                .to_string()
                .contains("no unit")
        );
        assert!(
            parse_angle_deg("1.5parsec")
                .unwrap_err()
                .to_string()
                .contains("unknown angle unit")
        );
        assert!(parse_angle_deg("-1arcsec").is_err());
        assert!(parse_angle_deg("arcsec").is_err());
    }
}
