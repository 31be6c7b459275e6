//! Conversion factors between VOUnit strings (IVOA VOUnits 1.0), for ADQL's IN_UNIT: a unit
//! is a product of terms (`.` or a space multiplies, `/` divides), each an optional SI
//! prefix, a known unit and an optional power (`**2`, `^2`, `2`, `**(-1)`). Units are
//! reduced to a factor over SI base dimensions; two units convert when their dimensions
//! agree. Logarithmic (mag, dex) and offset (degC) units are refused. No crate implements
//! VOUnits in Rust, hence this small table.

use std::collections::BTreeMap;

/// Base dimensions: m, kg, s, rad, K, A, mol, cd, and counts (ct, photon, pix).
type Dims = [i32; 9];

const PREFIXES: [(&str, f64); 20] = [
    ("da", 1e1),
    ("y", 1e-24),
    ("z", 1e-21),
    ("a", 1e-18),
    ("f", 1e-15),
    ("p", 1e-12),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("c", 1e-2),
    ("d", 1e-1),
    ("h", 1e2),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
    ("Z", 1e21),
    ("Y", 1e24),
];

fn base(unit: &str) -> Option<(f64, Dims)> {
    use std::f64::consts::PI;
    let d = |m, kg, s, rad, k, a, mol, cd, ct| [m, kg, s, rad, k, a, mol, cd, ct];
    let deg = PI / 180.0;
    Some(match unit {
        "m" => (1.0, d(1, 0, 0, 0, 0, 0, 0, 0, 0)),
        "g" => (1e-3, d(0, 1, 0, 0, 0, 0, 0, 0, 0)),
        "s" => (1.0, d(0, 0, 1, 0, 0, 0, 0, 0, 0)),
        "rad" => (1.0, d(0, 0, 0, 1, 0, 0, 0, 0, 0)),
        "K" => (1.0, d(0, 0, 0, 0, 1, 0, 0, 0, 0)),
        "A" => (1.0, d(0, 0, 0, 0, 0, 1, 0, 0, 0)),
        "mol" => (1.0, d(0, 0, 0, 0, 0, 0, 1, 0, 0)),
        "cd" => (1.0, d(0, 0, 0, 0, 0, 0, 0, 1, 0)),
        "ct" | "count" | "photon" | "ph" | "pix" | "pixel" => (1.0, d(0, 0, 0, 0, 0, 0, 0, 0, 1)),
        "deg" => (deg, d(0, 0, 0, 1, 0, 0, 0, 0, 0)),
        "arcmin" => (deg / 60.0, d(0, 0, 0, 1, 0, 0, 0, 0, 0)),
        "arcsec" => (deg / 3600.0, d(0, 0, 0, 1, 0, 0, 0, 0, 0)),
        "mas" => (deg / 3.6e6, d(0, 0, 0, 1, 0, 0, 0, 0, 0)),
        "uas" => (deg / 3.6e9, d(0, 0, 0, 1, 0, 0, 0, 0, 0)),
        "sr" => (1.0, d(0, 0, 0, 2, 0, 0, 0, 0, 0)),
        "min" => (60.0, d(0, 0, 1, 0, 0, 0, 0, 0, 0)),
        "h" => (3600.0, d(0, 0, 1, 0, 0, 0, 0, 0, 0)),
        "d" => (86400.0, d(0, 0, 1, 0, 0, 0, 0, 0, 0)),
        "a" | "yr" => (365.25 * 86400.0, d(0, 0, 1, 0, 0, 0, 0, 0, 0)),
        "Hz" => (1.0, d(0, 0, -1, 0, 0, 0, 0, 0, 0)),
        "N" => (1.0, d(1, 1, -2, 0, 0, 0, 0, 0, 0)),
        "J" => (1.0, d(2, 1, -2, 0, 0, 0, 0, 0, 0)),
        "W" => (1.0, d(2, 1, -3, 0, 0, 0, 0, 0, 0)),
        "erg" => (1e-7, d(2, 1, -2, 0, 0, 0, 0, 0, 0)),
        "eV" => (1.602_176_634e-19, d(2, 1, -2, 0, 0, 0, 0, 0, 0)),
        "Jy" => (1e-26, d(0, 1, -2, 0, 0, 0, 0, 0, 0)),
        "Angstrom" | "angstrom" => (1e-10, d(1, 0, 0, 0, 0, 0, 0, 0, 0)),
        "AU" | "au" => (1.495_978_707e11, d(1, 0, 0, 0, 0, 0, 0, 0, 0)),
        "pc" => (3.085_677_581_491_367e16, d(1, 0, 0, 0, 0, 0, 0, 0, 0)),
        "lyr" => (9.460_730_472_580_8e15, d(1, 0, 0, 0, 0, 0, 0, 0, 0)),
        "solMass" => (1.988_409_87e30, d(0, 1, 0, 0, 0, 0, 0, 0, 0)),
        "solRad" => (6.957e8, d(1, 0, 0, 0, 0, 0, 0, 0, 0)),
        "solLum" => (3.828e26, d(2, 1, -3, 0, 0, 0, 0, 0, 0)),
        "Pa" => (1.0, d(-1, 1, -2, 0, 0, 0, 0, 0, 0)),
        "T" => (1.0, d(0, 1, -2, 0, 0, -1, 0, 0, 0)),
        "G" => (1e-4, d(0, 1, -2, 0, 0, -1, 0, 0, 0)),
        "C" => (1.0, d(0, 0, 1, 0, 0, 1, 0, 0, 0)),
        "V" => (1.0, d(2, 1, -3, 0, 0, -1, 0, 0, 0)),
        "barn" => (1e-28, d(2, 0, 0, 0, 0, 0, 0, 0, 0)),
        "" | "1" => (1.0, [0; 9]),
        _ => return None,
    })
}

/// A unit symbol with an optional prefix. Whole symbols win over prefix readings ("min" is
/// minutes, "Pa" pascal, "mas" milliarcseconds).
fn symbol(s: &str) -> Option<(f64, Dims)> {
    if let Some(b) = base(s) {
        return Some(b);
    }
    PREFIXES.iter().find_map(|(p, f)| {
        let rest = s.strip_prefix(p)?;
        // Non-metric units take no prefix.
        if matches!(
            rest,
            "deg"
                | "min"
                | "h"
                | "d"
                | "AU"
                | "au"
                | "solMass"
                | "solRad"
                | "solLum"
                | "Angstrom"
                | ""
        ) {
            return None;
        }
        base(rest).map(|(v, d)| (v * f, d))
    })
}

/// Factor and dimensions of a unit string.
fn parse(unit: &str) -> Result<(f64, Dims), String> {
    let u = unit.trim();
    for refused in ["mag", "dex", "dB", "degC"] {
        if u.contains(refused) {
            return Err(format!(
                "'{unit}' is a logarithmic or offset unit and cannot be scaled"
            ));
        }
    }
    let mut factor = 1.0;
    let mut dims = [0i32; 9];
    let mut sign = 1;
    let mut term = String::new();
    let mut apply = |term: &str, sign: i32| -> Result<(), String> {
        if term.is_empty() {
            return Ok(());
        }
        let (sym, power) = match term.find("**").or_else(|| term.find('^')) {
            Some(i) => {
                let p = term[i..]
                    .trim_start_matches(['*', '^'])
                    .trim_matches(['(', ')']);
                (
                    &term[..i],
                    p.parse::<i32>()
                        .map_err(|_| format!("bad power in '{term}'"))?,
                )
            }
            None => {
                let digits = term.trim_start_matches(|c: char| !c.is_ascii_digit() && c != '-');
                let i = term.len() - digits.len();
                if i > 0 && !digits.is_empty() {
                    (
                        &term[..i],
                        digits
                            .parse::<i32>()
                            .map_err(|_| format!("bad power in '{term}'"))?,
                    )
                } else {
                    (term, 1)
                }
            }
        };
        let (f, d) = symbol(sym).ok_or_else(|| format!("unknown unit '{sym}' in '{unit}'"))?;
        let p = sign * power;
        factor *= f.powi(p);
        for k in 0..9 {
            dims[k] += d[k] * p;
        }
        Ok(())
    };
    for c in u.chars() {
        match c {
            '.' | ' ' => {
                apply(&term, sign)?;
                term.clear();
            }
            '/' => {
                apply(&term, sign)?;
                term.clear();
                sign = -1;
            }
            _ => term.push(c),
        }
    }
    apply(&term, sign)?;
    Ok((factor, dims))
}

/// The factor converting values in `from` to values in `to`.
pub fn factor(from: &str, to: &str) -> Result<f64, String> {
    if from.trim() == to.trim() {
        return Ok(1.0);
    }
    let (f1, d1) = parse(from)?;
    let (f2, d2) = parse(to)?;
    if d1 != d2 {
        let show = |d: Dims| {
            let names = ["m", "kg", "s", "rad", "K", "A", "mol", "cd", "ct"];
            let m: BTreeMap<&str, i32> =
                names.iter().copied().zip(d).filter(|x| x.1 != 0).collect();
            format!("{m:?}")
        };
        return Err(format!(
            "'{from}' ({}) cannot be converted to '{to}' ({})",
            show(d1),
            show(d2)
        ));
    }
    Ok(f1 / f2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        ((a - b) / b).abs() < 1e-12
    }

    #[test]
    fn conversions() {
        assert!(close(factor("deg", "arcsec").unwrap(), 3600.0));
        assert!(close(factor("mas", "deg").unwrap(), 1.0 / 3.6e6));
        assert!(close(factor("mas/yr", "arcsec/a").unwrap(), 1e-3));
        assert!(close(factor("km/s", "m.s**-1").unwrap(), 1e3));
        assert!(close(factor("km/s", "m/s").unwrap(), 1e3));
        assert!(close(factor("kpc", "pc").unwrap(), 1e3));
        assert!(close(factor("mJy", "Jy").unwrap(), 1e-3));
        assert!(close(factor("erg/s/cm2", "W/m**2").unwrap(), 1e-3));
        assert!(close(factor("h", "min").unwrap(), 60.0));
        assert!(close(
            factor("deg**2", "sr").unwrap(),
            (std::f64::consts::PI / 180.0).powi(2)
        ));
        assert!(factor("mag", "Jy").unwrap_err().contains("logarithmic"));
        assert!(
            factor("deg", "s")
                .unwrap_err()
                .contains("cannot be converted")
        );
        assert!(
            factor("furlong", "m")
                .unwrap_err()
                .contains("unknown unit 'furlong'")
        );
    }
}
