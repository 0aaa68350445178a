//! `vexctl agent --connect ADDR ...`: drives a running agent (health, logs, modules,
//! load, unload, reload, exec, sysrq), as text or `--json`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use vexfs_proto::{
    Counters, ExecRequest, HealthReply, HungTask, LoadModuleRequest, Module, ModuleOutcome,
    ModuleReply, ReloadModuleRequest, StreamRequest, UnloadModuleRequest, event,
};

use super::{EXIT_FAILURES, EXIT_HARNESS, EXIT_OK};
use crate::client::{AgentClient, unkillable_summary};
use crate::transport::Address;

/// Drive a running agent.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Agent address: vsock:CID:PORT, hvsock:PATH:PORT or unix:PATH.
    #[arg(long, env = "VEXFS_AGENT")]
    pub connect: Address,
    /// Print JSON (one object, or one per line for logs).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to keep retrying the connection (the guest may still be booting).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// The operation.
    #[command(subcommand)]
    pub command: AgentCommand,
}

/// Agent operations.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Versions, boot id, uptime, taint.
    Health,
    /// Stream kernel log records (and hung-task notices) until Ctrl-C.
    Logs {
        /// Start at this kmsg sequence number (0: oldest in the ring).
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Also print heartbeats and counter samples.
        #[arg(long)]
        all: bool,
        /// Heartbeat period, ms (0: agent default).
        #[arg(long, default_value_t = 0)]
        heartbeat_ms: u32,
    },
    /// Loaded modules (/proc/modules).
    Modules,
    /// Load a module (path inside the guest).
    Load {
        /// Absolute path of the .ko in the guest.
        path: String,
        /// Module parameters, "a=1 b=2".
        #[arg(long, default_value = "")]
        params: String,
    },
    /// Unload a module, bounded by a deadline.
    Unload {
        /// Module name.
        name: String,
        /// Deadline in ms (0: agent default).
        #[arg(long, default_value_t = 0)]
        deadline_ms: u32,
        /// Forced unload.
        #[arg(long)]
        force: bool,
    },
    /// Unload, verify, load, verify.
    Reload {
        /// Module name.
        name: String,
        /// Absolute path of the .ko in the guest.
        path: String,
        /// Module parameters.
        #[arg(long, default_value = "")]
        params: String,
        /// Unload deadline in ms (0: agent default).
        #[arg(long, default_value_t = 0)]
        deadline_ms: u32,
    },
    /// Run a command in the guest; exits with its exit code.
    Exec {
        /// Timeout in ms (0: agent default, 60 s).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        /// Extra environment, KEY=VALUE (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Inherit the agent's environment.
        #[arg(long)]
        inherit_env: bool,
        /// Working directory.
        #[arg(long, default_value = "")]
        cwd: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// Write one key to /proc/sysrq-trigger.
    Sysrq {
        /// The key (e.g. w, t, l, m; c crashes the guest).
        key: String,
    },
}

/// Runs `vexctl agent`.
pub fn run(args: AgentArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = run_async(args) => r,
            _ = tokio::signal::ctrl_c() => Ok(EXIT_OK),
        }
    })
}

async fn run_async(args: AgentArgs) -> anyhow::Result<u8> {
    let timeout = Duration::from_secs_f64(args.connect_timeout.max(0.0));
    let (mut client, health) = AgentClient::connect_healthy(&args.connect, timeout).await?;
    let json = args.json;
    let mut out = std::io::stdout().lock();
    match args.command {
        AgentCommand::Health => {
            if json {
                writeln!(out, "{}", health_json(&health))?;
            } else {
                print_health(&mut out, &health)?;
            }
            Ok(EXIT_OK)
        }
        AgentCommand::Logs {
            from_seq,
            all,
            heartbeat_ms,
        } => {
            drop(out);
            let req = StreamRequest {
                from_seq,
                heartbeat_ms,
                disable_counters: !all,
                ..Default::default()
            };
            let mut stream = client.stream_events(req).await?;
            let color = use_color();
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        let mut out = std::io::stdout().lock();
                        let written =
                            print_event(&mut out, &ev, json, all, color).and_then(|()| out.flush());
                        match written {
                            Ok(()) => {}
                            // `vexctl agent logs | head`: the reader is done, so are we.
                            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                                return Ok(EXIT_OK);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    Ok(None) => {
                        eprintln!("vexctl: event stream ended");
                        return Ok(EXIT_HARNESS);
                    }
                    Err(status) => anyhow::bail!("event stream: {status}"),
                }
            }
        }
        AgentCommand::Modules => {
            let reply = client.list_modules().await?;
            if json {
                let mods: Vec<Value> = reply.modules.iter().map(module_json).collect();
                writeln!(out, "{}", json!({ "modules": mods }))?;
            } else {
                writeln!(
                    out,
                    "{:<28} {:>10} {:>4} {:<10} {:<5} holders",
                    "name", "size", "refs", "state", "taint"
                )?;
                for m in &reply.modules {
                    writeln!(
                        out,
                        "{:<28} {:>10} {:>4} {:<10} {:<5} {}",
                        m.name,
                        m.size,
                        m.refcount,
                        m.state,
                        m.taint,
                        m.holders.join(",")
                    )?;
                }
            }
            Ok(EXIT_OK)
        }
        AgentCommand::Load { path, params } => {
            let reply = client
                .load_module(LoadModuleRequest { path, params })
                .await?;
            module_result(&mut out, &reply, json)
        }
        AgentCommand::Unload {
            name,
            deadline_ms,
            force,
        } => {
            let reply = client
                .unload_module(UnloadModuleRequest {
                    name,
                    deadline_ms,
                    force,
                })
                .await?;
            module_result(&mut out, &reply, json)
        }
        AgentCommand::Reload {
            name,
            path,
            params,
            deadline_ms,
        } => {
            let reply = client
                .reload_module(ReloadModuleRequest {
                    name,
                    path,
                    params,
                    deadline_ms,
                })
                .await?;
            module_result(&mut out, &reply, json)
        }
        AgentCommand::Exec {
            timeout_ms,
            env,
            inherit_env,
            cwd,
            argv,
        } => {
            let reply = client
                .exec(ExecRequest {
                    argv,
                    env,
                    inherit_env,
                    cwd,
                    timeout_ms,
                    ..Default::default()
                })
                .await?;
            if json {
                let v = json!({
                    "exit_code": reply.exit_code, "signal": reply.signal,
                    "stdout": String::from_utf8_lossy(&reply.stdout),
                    "stderr": String::from_utf8_lossy(&reply.stderr),
                    "duration_ms": reply.duration_ms, "timed_out": reply.timed_out,
                    "stdout_truncated": reply.stdout_truncated, "stderr_truncated": reply.stderr_truncated,
                    "pid": reply.pid, "unkillable": reply.unkillable.as_ref().map(hung_json),
                });
                writeln!(out, "{v}")?;
            } else {
                out.write_all(&reply.stdout)?;
                out.flush()?;
                std::io::stderr().write_all(&reply.stderr)?;
                if reply.timed_out {
                    eprintln!(
                        "vexctl: command timed out after {} ms (process group killed)",
                        reply.duration_ms
                    );
                }
                if let Some(h) = &reply.unkillable {
                    eprintln!("vexctl: {}", unkillable_summary(h));
                }
            }
            Ok(exec_exit_code(
                reply.exit_code,
                reply.signal,
                reply.timed_out,
            ))
        }
        AgentCommand::Sysrq { key } => {
            client.sysrq(&key).await?;
            if json {
                writeln!(out, "{}", json!({ "sysrq": key, "ok": true }))?;
            }
            Ok(EXIT_OK)
        }
    }
}

fn hung_json(h: &HungTask) -> Value {
    json!({
        "pid": h.pid, "comm": h.comm, "blocked_secs": h.blocked_secs, "source": h.source,
        "stack": h.stack, "wchan": h.wchan, "kmsg_seq": h.kmsg_seq,
    })
}

/// Exit code mirroring a shell: the command's code, 128+signal, or 124 (as
/// timeout(1)) when the agent's timeout killed it.
fn exec_exit_code(exit_code: i32, signal: i32, timed_out: bool) -> u8 {
    if timed_out {
        124
    } else if exit_code < 0 && signal <= 0 {
        1
    } else if signal > 0 {
        (128 + signal).clamp(0, 255) as u8
    } else {
        exit_code.clamp(0, 255) as u8
    }
}

fn use_color() -> bool {
    crate::report::summary::stdout_color()
}

/// Health as JSON.
pub fn health_json(h: &HealthReply) -> Value {
    json!({
        "agent_version": h.agent_version, "kernel_release": h.kernel_release,
        "boot_id": h.boot_id, "uptime_ms": h.uptime_ms, "taint_mask": h.taint_mask,
        "taint_flags": h.taint_flags, "taint_names": h.taint_names,
        "agent_rss_bytes": h.agent_rss_bytes, "agent_pid": h.agent_pid,
        "last_kmsg_seq": h.last_kmsg_seq,
    })
}

fn print_health(out: &mut impl Write, h: &HealthReply) -> std::io::Result<()> {
    writeln!(
        out,
        "agent     {} (pid {}, rss {} KiB)",
        h.agent_version,
        h.agent_pid,
        h.agent_rss_bytes / 1024
    )?;
    writeln!(out, "kernel    {}", h.kernel_release)?;
    writeln!(out, "boot id   {}", h.boot_id)?;
    writeln!(out, "uptime    {:.1} s", h.uptime_ms as f64 / 1000.0)?;
    let taint = if h.taint_mask == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", h.taint_flags, h.taint_names.join(", "))
    };
    writeln!(out, "taint     {taint}")?;
    writeln!(out, "kmsg seq  {}", h.last_kmsg_seq)
}

fn module_json(m: &Module) -> Value {
    json!({
        "name": m.name, "size": m.size, "refcount": m.refcount, "holders": m.holders,
        "state": m.state, "taint": m.taint, "address": m.address,
    })
}

fn outcome_name(outcome: i32) -> &'static str {
    match ModuleOutcome::try_from(outcome) {
        Ok(ModuleOutcome::Ok) => "ok",
        Ok(ModuleOutcome::Hung) => "hung",
        Ok(ModuleOutcome::Failed) => "failed",
        Ok(ModuleOutcome::VerifyFailed) => "verify-failed",
        Ok(ModuleOutcome::AlreadyLoaded) => "already-loaded",
        _ => "unspecified",
    }
}

fn module_result(out: &mut impl Write, r: &ModuleReply, json: bool) -> anyhow::Result<u8> {
    let outcome = outcome_name(r.outcome);
    if json {
        let v = json!({
            "outcome": outcome, "module": r.module.as_ref().map(module_json),
            "duration_ms": r.duration_ms, "detail": r.detail,
        });
        writeln!(out, "{v}")?;
    } else {
        let state = r
            .module
            .as_ref()
            .map(|m| format!(" [{} {}]", m.name, m.state))
            .unwrap_or_default();
        let detail = if r.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", r.detail)
        };
        writeln!(out, "{outcome} in {} ms{state}{detail}", r.duration_ms)?;
    }
    Ok(if r.outcome == ModuleOutcome::Ok as i32 {
        EXIT_OK
    } else {
        EXIT_FAILURES
    })
}

fn counters_json(c: &Counters) -> Value {
    json!({
        "ts_us": c.ts_us, "meminfo_kb": c.meminfo_kb, "taint_mask": c.taint_mask,
        "processes": c.processes, "processes_d_state": c.processes_d_state,
        "file_handles_allocated": c.file_handles_allocated,
        "load1": c.load1, "slabs": c.slabs.len(), "unreadable": c.unreadable,
    })
}

/// One event as JSON (`{"kmsg": {...}}`, `{"gap": ...}`, ...).
pub fn event_json(ev: &vexfs_proto::Event) -> Value {
    match &ev.kind {
        Some(event::Kind::Kmsg(k)) => json!({"kmsg": {
            "seq": k.seq, "level": k.level, "facility": k.facility, "ts_us": k.ts_us,
            "caller": k.caller, "text": k.text, "continuation": k.continuation, "flags": k.flags,
        }}),
        Some(event::Kind::Gap(g)) => json!({"gap": {"from": g.from, "to": g.to}}),
        Some(event::Kind::Counters(c)) => json!({ "counters": counters_json(c) }),
        Some(event::Kind::HungTask(h)) => json!({ "hung_task": hung_json(h) }),
        Some(event::Kind::Heartbeat(b)) => json!({"heartbeat": {
            "last_seq": b.last_seq, "boot_id": b.boot_id, "uptime_ms": b.uptime_ms, "beat": b.beat,
        }}),
        None => json!({}),
    }
}

fn print_event(
    out: &mut impl Write,
    ev: &vexfs_proto::Event,
    json: bool,
    all: bool,
    color: bool,
) -> std::io::Result<()> {
    let is_noise = matches!(
        ev.kind,
        Some(event::Kind::Heartbeat(_)) | Some(event::Kind::Counters(_))
    );
    if is_noise && !all {
        return Ok(());
    }
    if json {
        return writeln!(out, "{}", event_json(ev));
    }
    match &ev.kind {
        Some(event::Kind::Kmsg(k)) => {
            let (pre, post) = match (color, k.level) {
                (true, 0..=3) => ("\x1b[31m", "\x1b[0m"),
                (true, 4) => ("\x1b[33m", "\x1b[0m"),
                _ => ("", ""),
            };
            writeln!(
                out,
                "{pre}[{:>5}.{:06}] <{}> #{} {}{post}",
                k.ts_us / 1_000_000,
                k.ts_us % 1_000_000,
                k.level,
                k.seq,
                k.text
            )?;
            for c in &k.continuation {
                writeln!(out, "    {c}")?;
            }
            Ok(())
        }
        Some(event::Kind::Gap(g)) => writeln!(
            out,
            "-- lost kmsg records {}..={} (ring overwritten) --",
            g.from, g.to
        ),
        Some(event::Kind::HungTask(h)) => {
            writeln!(
                out,
                "-- hung task {}:{} blocked {} s (wchan {}) --",
                h.comm, h.pid, h.blocked_secs, h.wchan
            )?;
            for f in &h.stack {
                writeln!(out, "    {f}")?;
            }
            Ok(())
        }
        Some(event::Kind::Heartbeat(b)) => writeln!(
            out,
            "-- heartbeat #{} uptime {} ms last seq {} --",
            b.beat, b.uptime_ms, b.last_seq
        ),
        Some(event::Kind::Counters(c)) => writeln!(
            out,
            "-- counters: {} processes ({} D), load {:.2}, taint {} --",
            c.processes, c.processes_d_state, c.load1, c.taint_mask
        ),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        a: AgentArgs,
    }

    #[test]
    fn parses_exec_with_hyphen_args() {
        let t = T::try_parse_from([
            "x",
            "--connect",
            "unix:/a.sock",
            "--json",
            "exec",
            "--timeout-ms",
            "5",
            "ls",
            "-l",
            "/",
        ])
        .unwrap();
        assert!(t.a.json);
        match t.a.command {
            AgentCommand::Exec {
                timeout_ms, argv, ..
            } => {
                assert_eq!(timeout_ms, 5);
                assert_eq!(argv, ["ls", "-l", "/"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(T::try_parse_from(["x", "--connect", "tcp:1", "health"]).is_err());
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exec_exit_code(0, 0, false), 0);
        assert_eq!(exec_exit_code(3, 0, false), 3);
        assert_eq!(exec_exit_code(-1, 9, false), 137);
        assert_eq!(exec_exit_code(-1, 9, true), 124);
        assert_eq!(exec_exit_code(-1, 0, false), 1);
        assert_eq!(exec_exit_code(300, 0, false), 255);
    }
}
