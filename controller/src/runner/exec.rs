//! The one way the runner runs things in the guest: a plan's shell command (`sh -c`,
//! the user's own text) or a harness command as an argv, never a shell string the
//! harness assembles.

use super::ms;
use std::time::Duration;

use vexfs_proto::{ExecReply, ExecRequest, SampleRequest};

use crate::client::{AgentClient, unkillable_summary};
use crate::plan::ExecStep;

/// Runs `argv` with `stdin`, as `uid` (and gid), within `timeout`.
pub(super) async fn run(
    client: &mut AgentClient,
    argv: Vec<String>,
    stdin: Vec<u8>,
    env: Vec<String>,
    uid: u32,
    timeout: Duration,
) -> Result<ExecReply, String> {
    let what = argv.join(" ");
    let req = ExecRequest {
        argv,
        env,
        stdin,
        timeout_ms: ms(timeout).max(1),
        uid,
        gid: uid,
        ..Default::default()
    };
    let mut c = client
        .clone()
        .with_call_timeout(timeout + Duration::from_secs(5));
    c.exec(req).await.map_err(|e| format!("{what}: {e}"))
}

/// Runs a plan's shell command.
pub(super) async fn shell(
    client: &mut AgentClient,
    cmd: &str,
    env: Vec<String>,
    uid: u32,
    timeout: Duration,
) -> Result<ExecReply, String> {
    run(
        client,
        vec!["sh".into(), "-c".into(), cmd.into()],
        Vec::new(),
        env,
        uid,
        timeout,
    )
    .await
}

/// Runs a harness command (no shell) and checks it exited 0.
pub(super) async fn argv_ok(
    client: &mut AgentClient,
    argv: &[&str],
    timeout: Duration,
) -> Result<ExecReply, String> {
    let r = run(
        client,
        argv.iter().map(|s| s.to_string()).collect(),
        Vec::new(),
        Vec::new(),
        0,
        timeout,
    )
    .await?;
    if r.exit_code == 0 {
        Ok(r)
    } else {
        Err(failure(&argv.join(" "), &r))
    }
}

/// Why a command failed, in one line.
pub(super) fn failure(what: &str, r: &ExecReply) -> String {
    if r.timed_out {
        return match &r.unkillable {
            Some(h) => format!("{what}: timed out; {}", unkillable_summary(h)),
            None => format!("{what}: timed out"),
        };
    }
    format!(
        "{what}: exit {}: {}",
        r.exit_code,
        String::from_utf8_lossy(&r.stderr).trim()
    )
}

/// Checks an exec step's expectations against the reply.
pub(super) fn check(s: &ExecStep, r: &ExecReply) -> Result<(), String> {
    let out = String::from_utf8_lossy(&r.stdout);
    let err = String::from_utf8_lossy(&r.stderr);
    if r.timed_out {
        return Err(failure(&s.cmd, r));
    }
    if !s.exit.accepts(r.exit_code) {
        return Err(format!(
            "{}: exit {} (expected {:?}); stderr: {}",
            s.cmd,
            r.exit_code,
            s.exit,
            err.trim()
        ));
    }
    if let Some(want) = &s.stdout
        && !out.contains(want.as_str())
    {
        return Err(format!("{}: stdout {:?} lacks {want:?}", s.cmd, out.trim()));
    }
    if let Some(want) = &s.stderr
        && !err.contains(want.as_str())
    {
        return Err(format!("{}: stderr {:?} lacks {want:?}", s.cmd, err.trim()));
    }
    Ok(())
}

/// The guest's unreclaimable slab, kB.
pub(super) async fn sunreclaim_kb(client: &mut AgentClient) -> Result<f64, String> {
    let c = client
        .sample_counters(SampleRequest::default())
        .await
        .map_err(|e| format!("sample: {e}"))?;
    Ok(c.meminfo_kb.get("SUnreclaim").copied().unwrap_or(0) as f64)
}
