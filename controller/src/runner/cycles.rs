//! The `cycles` step: a load generator that repeats a command from many threads,
//! times every operation and samples counters for a leak trend.

use std::time::{Duration, Instant};

use super::exec::{shell, sunreclaim_kb};
use crate::client::AgentClient;
use crate::plan::CyclesStep;
use crate::trend;

/// Runs a cycles step: the counters that leaked, if any, or why the step failed.
pub(super) async fn cycles(
    client: &mut AgentClient,
    c: &CyclesStep,
    deadline: Instant,
    metrics: &mut Vec<(String, f64)>,
) -> Result<Option<Vec<trend::Trend>>, String> {
    let per_sample = (c.count / c.leak_samples.max(1)).max(1);
    let mut sunreclaim_series = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
    for t in 0..c.threads {
        let mut client = client.clone();
        let cmd = c.cmd.clone();
        let count = c.count;
        let tx = tx.clone();
        tasks.spawn(async move {
            let mut ops = Vec::with_capacity(count as usize);
            for i in 0..count {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let t0 = Instant::now();
                let env = vec![format!("T={t}"), format!("I={i}")];
                let ok = match shell(&mut client, &cmd, env, 0, left.min(Duration::from_secs(60)))
                    .await
                {
                    Ok(r) => r.exit_code == 0,
                    Err(_) => false,
                };
                ops.push((t0.elapsed(), ok));
                if t == 0 && (i + 1) % per_sample == 0 {
                    let _ = tx.send(()).await;
                }
            }
            ops
        });
    }
    drop(tx);
    // Thread 0 signals sample points; sample between its cycles.
    while rx.recv().await.is_some() {
        if let Ok(v) = sunreclaim_kb(client).await {
            sunreclaim_series.push(v);
        }
    }
    let mut ops: Vec<(Duration, bool)> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(v) = done {
            ops.extend(v);
        }
    }
    let planned = u64::from(c.count) * u64::from(c.threads);
    let failed =
        ops.iter().filter(|(_, ok)| !ok).count() as f64 + (planned as f64 - ops.len() as f64);
    let error_rate = failed / planned as f64;
    let half = ops.len() / 2;
    let mean = |v: &[(Duration, bool)]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().map(|(d, _)| d.as_secs_f64() * 1e3).sum::<f64>() / v.len() as f64
        }
    };
    let (first, second) = (mean(&ops[..half]), mean(&ops[half..]));
    let slowdown = if first > 0.0 { second / first } else { 1.0 };
    metrics.push(("cycles".into(), ops.len() as f64));
    metrics.push(("error_rate".into(), error_rate));
    metrics.push(("op_ms_first_half".into(), first));
    metrics.push(("op_ms_second_half".into(), second));
    metrics.push(("slowdown".into(), slowdown));
    let leaks = trend::leaks(
        &[trend::Series {
            name: "SUnreclaim".into(),
            unit: "kB".into(),
            min_growth: 256.0,
            values: sunreclaim_series,
        }],
        &trend::Config::default(),
    );
    if !leaks.is_empty() {
        return Ok(Some(leaks));
    }
    if error_rate > c.max_error_rate {
        return Err(format!(
            "{failed} of {planned} cycles failed (error rate {error_rate:.3} > {})",
            c.max_error_rate
        ));
    }
    if slowdown > c.max_slowdown {
        return Err(format!(
            "operations slowed down {slowdown:.2}x from the first half to the second (max {})",
            c.max_slowdown
        ));
    }
    Ok(None)
}
