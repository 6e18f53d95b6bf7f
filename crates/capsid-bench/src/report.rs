//! The benchmark result format and its table.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One measured figure beside its floor.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: String,
    pub baseline_value: f64,
    pub ratio: f64,
}

impl Row {
    pub fn new(name: &str, value: f64, unit: &str, baseline: &str, baseline_value: f64) -> Self {
        let ratio = if baseline_value > 0.0 {
            value / baseline_value
        } else {
            0.0
        };
        Self {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
            baseline: baseline.to_owned(),
            baseline_value,
            ratio,
        }
    }
}

/// The `p` quantile (0..=1) of sorted `sorted`, in µs.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// The runtime every group measures on: two workers, as on the 2-core machines the targets
/// are set for.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub fn print_table(group: &str, rows: &[Row]) {
    println!("\n{group}");
    println!("| benchmark | value | unit | baseline | baseline value | ratio |");
    println!("| --- | ---: | --- | --- | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} |",
            r.name,
            figure(r.value),
            r.unit,
            r.baseline,
            figure(r.baseline_value),
            r.ratio
        );
    }
}

/// A figure with the decimals its size needs (`0.78`, `13.4`, `61726`).
fn figure(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn write_json(dir: &Path, group: &str, rows: &[Row]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{group}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(rows)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}
