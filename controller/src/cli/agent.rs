//! `vexctl agent --connect ADDR ...`: drives a running agent (health, logs, modules,
//! load, unload, reload, exec, sysrq), as text or `--json`. The JSON is the agent's
//! own reply types through their serde derives (vexfs-proto's `serde` feature).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use vexfs_proto::{
    ExecRequest, HealthReply, LoadModuleRequest, ModuleOutcome, ModuleReply, ReloadModuleRequest,
    StreamRequest, UnloadModuleRequest, event,
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
                writeln!(out, "{}", serde_json::to_string(&health)?)?;
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
                writeln!(out, "{}", serde_json::to_string(&reply)?)?;
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
                writeln!(out, "{}", serde_json::to_string(&reply)?)?;
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
    json!(h)
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

fn module_result(out: &mut impl Write, r: &ModuleReply, json: bool) -> anyhow::Result<u8> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    } else {
        let outcome = vexfs_proto::json::module_outcome_name(r.outcome);
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

/// One event as JSON (`{"kmsg": {...}}`, `{"gap": ...}`, ...).
pub fn event_json(ev: &vexfs_proto::Event) -> Value {
    json!(ev)
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

    /// The JSON the derives give keeps the shapes the hand-written code had: events
    /// keyed by kind, output bytes as text, enums by short name.
    #[test]
    fn proto_types_serialize_to_the_documented_json() {
        use vexfs_proto::{ExecReply, Gap, HungSource, HungTask, KmsgRecord, Module};
        let kmsg = vexfs_proto::Event {
            kind: Some(event::Kind::Kmsg(KmsgRecord {
                seq: 7,
                level: 3,
                text: "Oops: 0000 [#1]".into(),
                ..Default::default()
            })),
        };
        let v = event_json(&kmsg);
        assert_eq!(v["kmsg"]["seq"], 7);
        assert_eq!(v["kmsg"]["text"], "Oops: 0000 [#1]");
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        let gap = vexfs_proto::Event {
            kind: Some(event::Kind::Gap(Gap { from: 3, to: 9 })),
        };
        assert_eq!(event_json(&gap), json!({"gap": {"from": 3, "to": 9}}));
        assert_eq!(event_json(&vexfs_proto::Event { kind: None }), Value::Null);

        let hung = HungTask {
            pid: 42,
            comm: "mount".into(),
            source: HungSource::DstateScan as i32,
            stack: vec!["vexfs_lock+0x1/0x2 [vexfs]".into()],
            ..Default::default()
        };
        let reply = ExecReply {
            exit_code: -1,
            stdout: b"ok\n\xff".to_vec(),
            stderr: vec![],
            unkillable: Some(hung),
            ..Default::default()
        };
        let v: Value = serde_json::to_value(&reply).unwrap();
        assert_eq!(v["stdout"], "ok\n\u{fffd}");
        assert_eq!(v["stderr"], "");
        assert_eq!(v["exit_code"], -1);
        assert_eq!(v["unkillable"]["source"], "dstate-scan");
        assert_eq!(v["unkillable"]["stack"][0], "vexfs_lock+0x1/0x2 [vexfs]");

        let m = ModuleReply {
            outcome: ModuleOutcome::VerifyFailed as i32,
            module: Some(Module {
                name: "vexfs".into(),
                holders: vec!["a".into()],
                ..Default::default()
            }),
            duration_ms: 12,
            detail: "still present".into(),
        };
        let mut out = Vec::new();
        assert_eq!(module_result(&mut out, &m, true).unwrap(), EXIT_FAILURES);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["outcome"], "verify-failed");
        assert_eq!(v["module"]["name"], "vexfs");
        assert_eq!(v["module"]["holders"], json!(["a"]));
        assert_eq!(v["duration_ms"], 12);
        let mut text = Vec::new();
        module_result(&mut text, &m, false).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "verify-failed in 12 ms [vexfs ]: still present\n"
        );
        let unknown = ModuleReply {
            outcome: 99,
            ..Default::default()
        };
        assert_eq!(json!(unknown)["outcome"], "unspecified");
        let h = HealthReply {
            kernel_release: "6.12.57+deb12-amd64".into(),
            taint_names: vec!["O".into()],
            ..Default::default()
        };
        assert_eq!(health_json(&h)["kernel_release"], "6.12.57+deb12-amd64");
        assert_eq!(health_json(&h)["taint_names"], json!(["O"]));
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
