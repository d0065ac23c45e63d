//! Special functions for the value models: ln Γ and ψ (digamma) from
//! `statrs`, and the Gauss hypergeometric function ₂F₁ for real arguments,
//! written here because no well-kept Rust crate has it.
//!
//! ₂F₁ is evaluated by its power series where that converges fast
//! (`0 ≤ z ≤ 0.75`), through Pfaff's transformation for `z < 0`, and through
//! the `1 − z` connection formula (DLMF 15.8.4) for `0.75 < z < 1`, where
//! the series in `z` would need thousands of terms. The connection formula
//! divides by Γ at `c − a − b`; when that is within [`NEAR_INTEGER`] of an
//! integer (the degenerate case), the series in `z` is summed instead up
//! to `z = 0.97`, and beyond it ₂F₁ is taken as analytic in `c`: the
//! connection formula at `c ± h`, `c ± h/2` and `c ± h/4`,
//! Richardson-extrapolated (error `O(h⁶)`). A series that has
//! not converged in [`MAX_TERMS`] terms is an error, never a guess.

pub use statrs::function::gamma::{digamma, ln_gamma};

/// Terms of a power series summed at most.
pub const MAX_TERMS: usize = 2_000_000;
/// How close `c − a − b` may come to an integer before the connection
/// formula is abandoned (its two terms then cancel, losing about
/// `log10(1 / distance)` digits).
pub const NEAR_INTEGER: f64 = 1e-4;

/// Why ₂F₁ could not be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Hyp2f1Error {
    #[error("2F1 is defined here for z < 1 (or z = 1 with c > a + b), got z = {0}")]
    Domain(f64),
    #[error("2F1({a}, {b}; {c}; z): the parameters must be finite")]
    Parameters { a: f64, b: f64, c: f64 },
    #[error("2F1 has a pole: c = {0} is zero or a negative integer")]
    Pole(f64),
    #[error("2F1({a}, {b}; {c}; {z}) did not converge in {MAX_TERMS} terms")]
    NoConvergence { a: f64, b: f64, c: f64, z: f64 },
}

/// ln |Γ(x)| and the sign of Γ(x), for any real `x` that is not a pole.
fn ln_gamma_signed(x: f64) -> (f64, f64) {
    if x > 0.0 {
        return (ln_gamma(x), 1.0);
    }
    // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
    let s = (std::f64::consts::PI * x).sin();
    (
        std::f64::consts::PI.ln() - s.abs().ln() - ln_gamma(1.0 - x),
        s.signum(),
    )
}

/// Whether `x` is zero or a negative integer (a pole of Γ).
fn is_pole(x: f64) -> bool {
    x <= 0.0 && x == x.round()
}

/// `Γ(n₁)·Γ(n₂) / (Γ(d₁)·Γ(d₂))`, computed in logs; 0 when a denominator
/// argument is a pole (1/Γ vanishes there).
fn gamma_ratio(n: [f64; 2], d: [f64; 2]) -> f64 {
    if d.iter().any(|&v| is_pole(v)) {
        return 0.0;
    }
    let (mut log, mut sign) = (0.0, 1.0);
    for v in n {
        let (l, s) = ln_gamma_signed(v);
        log += l;
        sign *= s;
    }
    for v in d {
        let (l, s) = ln_gamma_signed(v);
        log -= l;
        sign *= s;
    }
    sign * log.exp()
}

/// The power series `Σ (a)ₙ(b)ₙ / ((c)ₙ n!) zⁿ`, to full f64 precision or
/// [`Hyp2f1Error::NoConvergence`]. Stops early (exactly) when `a` or `b` is
/// a non-positive integer.
fn series(a: f64, b: f64, c: f64, z: f64) -> Result<f64, Hyp2f1Error> {
    let (mut term, mut sum) = (1.0f64, 1.0f64);
    let mut comp = 0.0f64;
    for n in 0..MAX_TERMS {
        let n = n as f64;
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        // Neumaier: terms of both signs (negative a, b or z) cancel.
        let t = sum + term;
        comp += if sum.abs() >= term.abs() {
            (sum - t) + term
        } else {
            (term - t) + sum
        };
        sum = t;
        if term == 0.0 {
            return Ok(sum + comp);
        }
        // Converged once the term is below rounding and the ratio of
        // successive terms is below one (the tail is then geometric).
        let ratio = ((a + n + 1.0) * (b + n + 1.0) / ((c + n + 1.0) * (n + 2.0)) * z).abs();
        if term.abs() <= 1e-17 * (sum + comp).abs() && ratio < 1.0 {
            let tail = term.abs() * ratio / (1.0 - ratio);
            if tail <= 1e-16 * (sum + comp).abs() {
                return Ok(sum + comp);
            }
        }
    }
    Err(Hyp2f1Error::NoConvergence { a, b, c, z })
}

/// The Gauss hypergeometric function ₂F₁(a, b; c; z) for real arguments
/// and `z < 1` (and `z = 1` when `c > a + b`, by Gauss's theorem).
///
/// ```
/// use segmenta::value::special::hyp2f1;
/// // ₂F₁(1, 1; 2; z) = −ln(1 − z) / z
/// let z = 0.9;
/// let f = hyp2f1(1.0, 1.0, 2.0, z).unwrap();
/// assert!((f - (-(1.0f64 - z).ln() / z)).abs() < 1e-13);
/// ```
pub fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Result<f64, Hyp2f1Error> {
    if !(a.is_finite() && b.is_finite() && c.is_finite()) {
        return Err(Hyp2f1Error::Parameters { a, b, c });
    }
    if !z.is_finite() || z > 1.0 {
        return Err(Hyp2f1Error::Domain(z));
    }
    // A non-positive integer a or b ends the series before c's pole does
    // (at c itself the term would be 0/0: a pole).
    let polynomial = |p: f64| is_pole(p) && (!is_pole(c) || p > c);
    if polynomial(a) || polynomial(b) {
        return series(a, b, c, z);
    }
    if is_pole(c) {
        return Err(Hyp2f1Error::Pole(c));
    }
    if z == 0.0 {
        return Ok(1.0);
    }
    if z == 1.0 {
        if c - a - b <= 0.0 {
            return Err(Hyp2f1Error::Domain(z));
        }
        return Ok(gamma_ratio([c, c - a - b], [c - a, c - b]));
    }
    if z < 0.0 {
        // Pfaff: F(a, b; c; z) = (1 − z)^(−a) F(a, c − b; c; z / (z − 1)),
        // with z / (z − 1) in (0, 1).
        let w = z / (z - 1.0);
        return Ok((1.0 - z).powf(-a) * hyp2f1(a, c - b, c, w)?);
    }
    if z <= 0.75 {
        return series(a, b, c, z);
    }
    let m = c - a - b;
    if (m - m.round()).abs() >= NEAR_INTEGER {
        return connection(a, b, c, z);
    }
    if z <= 0.97 {
        return series(a, b, c, z);
    }
    // Degenerate: Richardson on the connection formula at c ± h, c ± h/2
    // and c ± h/4 (each at least 5 NEAR_INTEGER from the integer): the
    // symmetric means cancel odd powers of h, two eliminations the h² and
    // h⁴ terms.
    const H: f64 = 2e-3;
    let mean = |h: f64| -> Result<f64, Hyp2f1Error> {
        Ok((connection(a, b, c + h, z)? + connection(a, b, c - h, z)?) / 2.0)
    };
    let (m1, m2, m4) = (mean(H)?, mean(H / 2.0)?, mean(H / 4.0)?);
    let (r1, r2) = ((4.0 * m2 - m1) / 3.0, (4.0 * m4 - m2) / 3.0);
    Ok((16.0 * r2 - r1) / 15.0)
}

/// DLMF 15.8.4 (A&S 15.3.6): two series in `1 − z`, for `z` near 1 and
/// `c − a − b` not an integer.
fn connection(a: f64, b: f64, c: f64, z: f64) -> Result<f64, Hyp2f1Error> {
    let (m, y) = (c - a - b, 1.0 - z);
    let first = gamma_ratio([c, m], [c - a, c - b]) * series(a, b, 1.0 - m, y)?;
    let second = gamma_ratio([c, -m], [a, b]) * y.powf(m) * series(c - a, c - b, 1.0 + m, y)?;
    Ok(first + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) {
        assert!(
            (got - want).abs() <= rel * want.abs().max(1e-300),
            "{got} vs {want} (relative {:e})",
            (got - want).abs() / want.abs()
        );
    }

    #[test]
    fn elementary_closed_forms_across_the_regions() {
        // ln: F(1, 1; 2; z) = −ln(1 − z)/z, also near z = 1 (c − a − b = 0:
        // the degenerate case, by the series and then by Richardson).
        for z in [-5.0, -0.5, 0.1, 0.5, 0.8, 0.95, 0.999] {
            close(
                hyp2f1(1.0, 1.0, 2.0, z).unwrap(),
                -(1.0f64 - z).ln() / z,
                1e-12,
            );
        }
        // Binomial: F(a, b; b; z) = (1 − z)^(−a).
        for z in [-3.0, 0.3, 0.9, 0.99] {
            close(
                hyp2f1(2.5, 1.3, 1.3, z).unwrap(),
                (1.0f64 - z).powf(-2.5),
                1e-12,
            );
        }
        // arcsin: F(1/2, 1/2; 3/2; z²) = arcsin(z)/z.
        for z in [0.2f64, 0.7, 0.95, 0.9999] {
            close(hyp2f1(0.5, 0.5, 1.5, z * z).unwrap(), z.asin() / z, 1e-12);
        }
        // A polynomial: F(−2, b; c; z) = 1 − 2bz/c + b(b+1)z²/(c(c+1)).
        let (b, c, z) = (3.0, 4.0, 0.9);
        close(
            hyp2f1(-2.0, b, c, z).unwrap(),
            1.0 - 2.0 * b * z / c + b * (b + 1.0) * z * z / (c * (c + 1.0)),
            1e-14,
        );
    }

    #[test]
    fn gauss_theorem_at_one_and_the_limit_below_it() {
        // F(a, b; c; 1) = Γ(c)Γ(c−a−b)/(Γ(c−a)Γ(c−b)); F(1, 1; 3; 1) = 2.
        close(hyp2f1(1.0, 1.0, 3.0, 1.0).unwrap(), 2.0, 1e-13);
        let near = hyp2f1(1.0, 1.0, 3.0, 1.0 - 1e-9).unwrap();
        close(near, 2.0, 1e-7);
        assert!(hyp2f1(1.0, 1.0, 2.0, 1.0).is_err());
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the references' own digits
    fn reference_values_in_the_hard_region() {
        // From mpmath 1.4.1's hyp2f1 at 30 digits. Arguments as BG/NBD uses them
        // (r + x, b + x; a + b + x − 1; t/(α + T + t)), near z = 1 and with
        // c − a − b far from, and close to, an integer.
        let cases = [
            // (a, b, c, z, value)
            (0.243, 2.426, 2.219, 0.898, 1.935_387_232_160_334_976_2),
            (3.243, 5.426, 5.219, 0.9, 2_568.134_952_755_921_169),
            (10.243, 12.426, 21.219, 0.95, 405_159.419_336_444_570_18),
            (1.5, 2.5, 3.5, 0.999, 146.937_128_977_006_750_67),
            (2.3, 4.1, 1.7, 0.97, 25_057_197.544_727_767_488),
            (1.2, 3.4, 5.6, -0.8, 0.630_994_881_160_189_743_35),
            // c − a − b within 5e-5 of 0, and exactly −1 and 0: beyond
            // z = 0.97 the Richardson extrapolation in c.
            (0.7, 1.3, 2.000_05, 0.99, 4.190_871_473_094_515_217_1),
            (5.0, 7.0, 11.0, 0.9999, 2_071_327.555_251_073_447_2),
            (0.5, 0.5, 1.0, 0.999, 3.081_960_708_698_816_016_4),
        ];
        for (a, b, c, z, want) in cases {
            close(hyp2f1(a, b, c, z).unwrap(), want, 1e-10);
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 1.5), Err(Hyp2f1Error::Domain(1.5)));
        assert_eq!(hyp2f1(1.0, 1.0, -2.0, 0.5), Err(Hyp2f1Error::Pole(-2.0)));
        assert!(hyp2f1(f64::NAN, 1.0, 2.0, 0.5).is_err());
        // A polynomial ending before c's pole is fine: F(−1, 1; −2; z) = 1 + z/2.
        close(hyp2f1(-1.0, 1.0, -2.0, 0.5).unwrap(), 1.25, 1e-15);
    }
}
