//! Figures, each next to the baseline measured beside it in the same run, printed as a table and
//! written as JSON so that runs can be compared.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// What was measured, e.g. `speed-layer throughput`.
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The baseline run beside it, and its value in the same unit.
    pub baseline: String,
    pub baseline_value: f64,
    /// `value / baseline_value`.
    pub ratio: f64,
    /// The target in words, and whether this run met it (None: no target).
    pub target: Option<String>,
    pub met: Option<bool>,
    /// Sizes and settings the figure depends on.
    pub details: String,
}

impl Figure {
    pub fn new(
        name: &str,
        (value, unit): (f64, &str),
        (baseline, baseline_value): (&str, f64),
        details: String,
    ) -> Figure {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: baseline.into(),
            baseline_value,
            ratio: if baseline_value == 0.0 {
                f64::NAN
            } else {
                value / baseline_value
            },
            target: None,
            met: None,
            details,
        }
    }

    pub fn target(mut self, target: &str, met: bool) -> Figure {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }
}

pub fn print_table(figures: &[Figure]) {
    println!(
        "\n{:<38} {:>14} {:<9} {:>14}  {:<30} {:>7}  target",
        "figure", "value", "unit", "baseline", "(baseline)", "ratio"
    );
    for f in figures {
        let target = match (&f.target, f.met) {
            (Some(t), Some(true)) => format!("met: {t}"),
            (Some(t), _) => format!("MISSED: {t}"),
            _ => String::new(),
        };
        println!(
            "{:<38} {:>14.1} {:<9} {:>14.1}  {:<30} {:>7.3}  {target}",
            f.name, f.value, f.unit, f.baseline_value, f.baseline, f.ratio
        );
    }
    println!();
    for f in figures {
        println!("{}: {}", f.name, f.details);
    }
}
