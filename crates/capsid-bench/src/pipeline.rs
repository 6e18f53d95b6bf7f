//! `process` (pipelines): a 3-stage pipeline's throughput against the same pipeline run by
//! `sh -c`, and a pipeline's start (and end) against three plain spawns one after another,
//! in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use capsid_process::{Child, EndPolicy, Pipeline, PipelineSpec, SpawnSpec};

use crate::report::Row;

/// Bytes through the throughput pipeline, per run.
const PIPELINE_BYTES: u64 = 1 << 29;
/// Runs of each side of the throughput row.
const THROUGHPUT_RUNS: usize = 15;
/// Pipeline starts (and as many triples of plain spawns) per side.
const PIPELINE_STARTS: u32 = 200;

fn pipeline(stages: Vec<SpawnSpec>) -> PipelineSpec {
    PipelineSpec {
        stages,
        pids: None,
        end: EndPolicy::LastStage,
        grace: Duration::from_secs(5),
        taps: Vec::new(),
    }
}

/// Both rows.
pub async fn rows(workspace: &Path) -> Result<Vec<Row>> {
    Ok(vec![
        throughput_row(workspace).await?,
        start_row(workspace).await?,
    ])
}

#[allow(clippy::cast_precision_loss)]
async fn throughput_row(workspace: &Path) -> Result<Row> {
    let count = PIPELINE_BYTES.to_string();
    let spec = pipeline(vec![
        SpawnSpec::new("head", workspace).args(["-c", count.as_str(), "/dev/zero"]),
        SpawnSpec::new("cat", workspace),
        SpawnSpec::new("wc", workspace).args(["-c"]),
    ]);
    let shell = SpawnSpec::new("sh", workspace)
        .args(["-c", &format!("head -c {count} /dev/zero | cat | wc -c")]);
    // Alternating runs, the median of each side: pipe throughput on a shared machine swings
    // by half from one run to the next.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..THROUGHPUT_RUNS {
        let start = Instant::now();
        let out = Pipeline::spawn(&spec).await?.wait_with_output().await;
        ours.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(
            String::from_utf8_lossy(&out.stdout).trim() == count,
            "the pipeline counted {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let start = Instant::now();
        let (_, stdout, _) = Child::spawn(&shell).await?.wait_with_output().await;
        theirs.push(start.elapsed().as_secs_f64());
        anyhow::ensure!(
            String::from_utf8_lossy(&stdout).trim() == count,
            "the shell counted {:?}",
            String::from_utf8_lossy(&stdout)
        );
    }
    let mb = PIPELINE_BYTES as f64 / 1e6;
    Ok(Row::new(
        &format!("pipeline head -c 512M /dev/zero | cat | wc -c (median of {THROUGHPUT_RUNS})"),
        mb / median(&mut ours),
        "MB/s",
        &format!("the same pipeline run by sh -c (median of {THROUGHPUT_RUNS})"),
        mb / median(&mut theirs),
    ))
}

fn median(seconds: &mut [f64]) -> f64 {
    seconds.sort_by(f64::total_cmp);
    seconds[seconds.len() / 2]
}

async fn start_row(workspace: &Path) -> Result<Row> {
    let truth = || SpawnSpec::new("/bin/true", workspace);
    let spec = pipeline(vec![truth(), truth(), truth()]);
    let (mut ours, mut plain) = (0f64, 0f64);
    for _ in 0..2 {
        let start = Instant::now();
        for _ in 0..PIPELINE_STARTS / 2 {
            let exits = Pipeline::spawn(&spec).await?.wait(None).await;
            anyhow::ensure!(
                exits.is_some_and(|e| e.iter().all(capsid_process::ExitInfo::success)),
                "true | true | true failed"
            );
        }
        ours += start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..PIPELINE_STARTS / 2 {
            for _ in 0..3 {
                let exit = Child::spawn(&truth()).await?.wait(None).await;
                anyhow::ensure!(exit.is_some_and(|e| e.success()), "true failed");
            }
        }
        plain += start.elapsed().as_secs_f64();
    }
    let per = |total: f64| total * 1e3 / f64::from(PIPELINE_STARTS);
    Ok(Row::new(
        "pipeline true | true | true, start to end",
        per(ours),
        "ms",
        "three plain spawns of true, one after another",
        per(plain),
    ))
}
