//! The value models: closed forms against independent numerical integrals,
//! parameter recovery from simulated customers, exact grouping, bad input.
//!
//! Tolerances, and why:
//! - **Closed forms**: the references integrate the model's definition
//!   (λ integrated in closed form, p by mpmath's adaptive quadrature at 30
//!   digits), independently of ₂F₁; f64 evaluation of the closed form
//!   loses a few digits in `1 − ratio · ₂F₁`: relative 1e-9.
//! - **Recovery**: a maximum-likelihood estimate is within three standard
//!   errors of the truth with probability 0.997 per parameter; the seed is
//!   fixed, so the test is deterministic.
//! - **Grouping**: the grouped likelihood is the same sum in another order,
//!   so both fits stop at the same optimum to the optimiser's tolerance:
//!   relative 1e-4 on parameters, 1e-9 on the log-likelihood.

use segmenta::value::bgnbd::{BgNbd, BgNbdParams};
use segmenta::value::gamma_gamma::{GammaGamma, GammaGammaParams};
use segmenta::value::simulate::{customers, Observation};
use segmenta::value::{Rft, ValueError};

fn cdnow() -> BgNbd {
    BgNbd {
        params: BgNbdParams {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        },
    }
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "{what}: {got} vs {want} (relative {:e})",
        (got - want).abs() / want.abs()
    );
}

#[test]
#[allow(clippy::excessive_precision)] // the references' own digits
fn closed_forms_match_the_model_integrated_numerically() {
    let m = cdnow();
    // (x, t_x, T, t, P(alive), E[Y(t)]): the first is the paper's example
    // (1.226 expected purchases in the next 39 weeks).
    let cases = [
        (
            2,
            30.43,
            38.86,
            39.0,
            0.726_578_570_080_672_91,
            1.226_028_174_767_144_4,
        ),
        (0, 0.0, 38.86, 39.0, 1.0, 0.195_098_052_011_262_64),
        (
            7,
            35.0,
            38.86,
            52.0,
            0.843_767_821_928_012_21,
            5.520_567_507_999_355_5,
        ),
        (
            1,
            2.0,
            30.0,
            10.0,
            0.274_872_586_048_393_84,
            0.093_777_807_593_140_291,
        ),
    ];
    for (x, t_x, t_big, t, alive, expected) in cases {
        let h = Rft { x, t_x, t: t_big };
        close(m.p_alive(&h), alive, 1e-12, "P(alive)");
        close(
            m.expected_purchases(&h, t).unwrap(),
            expected,
            1e-9,
            "E[Y(t)]",
        );
    }
    close(
        m.expected_new(39.0).unwrap(),
        1.196_723_193_320_816_8,
        1e-9,
        "E[X(39)]",
    );
    close(
        m.expected_new(78.0).unwrap(),
        1.860_519_057_942_768_5,
        1e-9,
        "E[X(78)]",
    );
}

fn truth() -> (BgNbdParams, GammaGammaParams) {
    (
        BgNbdParams {
            r: 0.25,
            alpha: 4.0,
            a: 0.8,
            b: 2.5,
        },
        GammaGammaParams {
            p: 6.0,
            q: 4.0,
            v: 15.0,
        },
    )
}

#[test]
fn parameters_are_recovered_within_three_standard_errors() {
    let (bg, gg) = truth();
    let obs = Observation {
        t_min: 26.0,
        t_max: 78.0,
        holdout: 0.0,
        grid: None,
    };
    let sim = customers(100_000, &bg, &gg, &obs, 2024);
    let rft: Vec<Rft> = sim.iter().map(|s| s.rft).collect();
    let fit = BgNbd::fit(&rft, true).unwrap();
    let got = fit.params;
    let se = &fit.report.std_errors;
    for (name, g, want, s) in [
        ("r", got.r, bg.r, se[0]),
        ("alpha", got.alpha, bg.alpha, se[1]),
        ("a", got.a, bg.a, se[2]),
        ("b", got.b, bg.b, se[3]),
    ] {
        assert!(s.is_finite() && s > 0.0, "{name}: standard error {s}");
        assert!(
            (g - want).abs() <= 3.0 * s,
            "{name} = {g} ± {s}, truth {want}"
        );
    }
    assert!(fit.report.converged && fit.report.gradient_norm <= 1e-5);

    let x: Vec<u32> = sim.iter().map(|s| s.rft.x).collect();
    let m: Vec<f64> = sim.iter().map(|s| s.mean_repeat_spend).collect();
    let g = GammaGamma::fit(&x, &m).unwrap();
    let (got, se) = (g.fitted.params, &g.fitted.report.std_errors);
    for (name, v, want, s) in [
        ("p", got.p, gg.p, se[0]),
        ("q", got.q, gg.q, se[1]),
        ("v", got.v, gg.v, se[2]),
    ] {
        assert!(
            (v - want).abs() <= 3.0 * s,
            "{name} = {v} ± {s}, truth {want}"
        );
    }
    // Simulated spend is independent of frequency: no warning.
    assert!(g.correlation_warning().is_none(), "{}", g.correlation);
}

#[test]
fn grouped_and_ungrouped_fits_agree() {
    let (bg, gg) = truth();
    // Dates on a daily grid in weeks: many customers share (x, t_x, T).
    let obs = Observation {
        t_min: 10.0,
        t_max: 40.0,
        holdout: 0.0,
        grid: Some(1.0 / 7.0),
    };
    let rft: Vec<Rft> = customers(20_000, &bg, &gg, &obs, 7)
        .iter()
        .map(|s| s.rft)
        .collect();
    let grouped = BgNbd::fit(&rft, true).unwrap();
    let single = BgNbd::fit(&rft, false).unwrap();
    let (a, b) = (grouped.params, single.params);
    for (x, y) in [(a.r, b.r), (a.alpha, b.alpha), (a.a, b.a), (a.b, b.b)] {
        close(x, y, 1e-4, "grouped vs ungrouped");
    }
    close(
        grouped.report.log_likelihood,
        single.report.log_likelihood,
        1e-9,
        "log-likelihood",
    );
    let direct = BgNbd::log_likelihood(&a, &rft).unwrap();
    close(
        grouped.report.log_likelihood,
        direct,
        1e-9,
        "reported log-likelihood",
    );
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let none = vec![
        Rft {
            x: 0,
            t_x: 0.0,
            t: 10.0
        };
        5
    ];
    assert_eq!(BgNbd::fit(&none, true), Err(ValueError::NoRepeatCustomers));
    assert_eq!(BgNbd::fit(&[], true), Err(ValueError::NoCustomers));
    let late = [Rft {
        x: 2,
        t_x: 12.0,
        t: 10.0,
    }];
    let e = BgNbd::fit(&late, true).unwrap_err().to_string();
    assert_eq!(e, "customer 0: t_x = 12 must lie between 0 and T = 10");
    let nan = [Rft {
        x: 1,
        t_x: f64::NAN,
        t: 10.0,
    }];
    assert!(BgNbd::fit(&nan, true)
        .unwrap_err()
        .to_string()
        .contains("finite"));
    assert_eq!(
        GammaGamma::fit(&[0, 0], &[f64::NAN, f64::NAN]).unwrap_err(),
        ValueError::NoRepeatCustomers
    );
}

#[test]
fn a_fit_without_a_maximum_says_so_with_its_best_parameters() {
    // Every customer bought again at once and then never: the dropout
    // prior runs to its bound (b → 0) rather than to an interior maximum.
    let rows = vec![
        Rft {
            x: 1,
            t_x: 0.0,
            t: 50.0
        };
        200
    ];
    match BgNbd::fit(&rows, true) {
        Err(ValueError::NotConverged { model, best, .. }) => {
            assert_eq!(model, "BG/NBD");
            assert!(best.contains("alpha = "), "{best}");
            // The best point found, not the first start (r = 1, α = mean T).
            assert!(
                !best.starts_with("r = 1.000000, alpha = 50.000000"),
                "{best}"
            );
        }
        other => panic!("expected a non-convergence error, got {other:?}"),
    }
}
