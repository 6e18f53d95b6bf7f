//! `capsid stats <capsule>`: a capsule's CPU, memory and tasks over the last minute, a row
//! per program with its latest sample and sparklines, and its program's quota report.

use anyhow::Result;
use capsid_protocol::Client;
use capsid_protocol::methods::{ProcessStats, SampleView, StatsParams};

use crate::output;

/// The levels a sparkline draws with, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Samples a sparkline shows (the newest).
const SPARK_SAMPLES: usize = 30;

/// `values` as a line of bars, each scaled between 0 and the largest (`floor` at least, so
/// an idle program draws low rather than noise).
fn sparkline(values: &[f64], floor: f64) -> String {
    let top = values.iter().copied().fold(floor, f64::max);
    values
        .iter()
        .map(|v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0..=7
            let level = ((v / top) * 7.0).round().clamp(0.0, 7.0) as usize;
            BARS[level]
        })
        .collect()
}

fn row(
    name: String,
    generation: String,
    stages: usize,
    running: bool,
    samples: &[SampleView],
) -> Vec<String> {
    let recent = &samples[samples.len().saturating_sub(SPARK_SAMPLES)..];
    let cpu: Vec<f64> = recent.iter().map(|s| s.cpu_percent).collect();
    #[allow(clippy::cast_precision_loss)] // drawn, not counted
    let rss: Vec<f64> = recent.iter().map(|s| s.rss_bytes as f64).collect();
    let latest = samples.last();
    vec![
        name,
        generation,
        stages.to_string(),
        if running { "yes".into() } else { "no".into() },
        latest.map_or_else(|| "-".into(), |s| format!("{:.1}", s.cpu_percent)),
        latest.map_or_else(|| "-".into(), |s| output::bytes(s.rss_bytes)),
        latest.map_or_else(|| "-".into(), |s| s.tasks.to_string()),
        sparkline(&cpu, 1.0),
        sparkline(&rss, 1.0),
    ]
}

/// Prints `name`'s samples (as JSON with `--json`).
pub(crate) async fn stats(client: &mut Client, name: String, as_json: bool) -> Result<()> {
    let params = StatsParams {
        name: name.parse().map_err(|e| anyhow::anyhow!("{name}: {e}"))?,
    };
    let answer = client.call::<ProcessStats>(&params).await?;
    if as_json {
        output::json(&answer);
        return Ok(());
    }
    let mut rows = Vec::new();
    if let Some(program) = &answer.program {
        let quota = match (&program.last_breach, program.quota_breaches) {
            (_, 0) => "no quota breach".to_owned(),
            (Some(last), n) => format!("{n} quota breaches, the last: {last}"),
            (None, n) => format!("{n} quota breaches"),
        };
        println!("program: {} restarts, {quota}", program.restarts);
        rows.push(row("program".into(), "-".into(), 1, true, &program.samples));
    }
    for p in &answer.processes {
        let name = p.label.clone().unwrap_or_else(|| "persistent".into());
        rows.push(row(
            name,
            p.generation.to_string(),
            p.stages,
            p.running,
            &p.samples,
        ));
    }
    if rows.is_empty() {
        println!("{name} runs no program and no persistent process");
        return Ok(());
    }
    output::table(
        &[
            "name",
            "generation",
            "stages",
            "running",
            "cpu %",
            "rss",
            "tasks",
            "cpu",
            "rss",
        ],
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_scales_to_its_largest_value() {
        assert_eq!(sparkline(&[0.0, 50.0, 100.0], 1.0), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0], 1.0), "▁▁", "idle draws low");
        assert_eq!(sparkline(&[], 1.0), "");
    }
}
