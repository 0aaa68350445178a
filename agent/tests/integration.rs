//! Integration tests: the real agent binary on a unix socket, a fake kernel log and
//! /proc tree, driven by the real generated client.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{AgentProcess, Fixture};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};
use vexfs_proto::agent_client::AgentClient;
use vexfs_proto::{
    Event, ExecRequest, HealthRequest, HungSource, KillProcessRequest, ListModulesRequest,
    LoadModuleRequest, ModuleOutcome, ReloadModuleRequest, SampleRequest, StreamRequest,
    SysrqRequest, UnloadModuleRequest, event,
};

const WAIT: Duration = Duration::from_secs(10);

/// Reads events until `pred` accepts one (panics after WAIT).
async fn wait_for<S>(stream: &mut S, mut pred: impl FnMut(&Event) -> bool) -> Event
where
    S: tokio_stream::Stream<Item = Result<Event, tonic::Status>> + Unpin,
{
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = stream
                .next()
                .await
                .expect("stream ended")
                .expect("stream error");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("timed out waiting for event")
}

/// Collects kmsg seqs and gaps until a record with seq `last` arrives.
async fn records_until<S>(stream: &mut S, last: u64) -> (Vec<u64>, Vec<(u64, u64)>)
where
    S: tokio_stream::Stream<Item = Result<Event, tonic::Status>> + Unpin,
{
    let mut seqs = Vec::new();
    let mut gaps = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = stream
                .next()
                .await
                .expect("stream ended")
                .expect("stream error");
            match ev.kind {
                Some(event::Kind::Kmsg(r)) => {
                    seqs.push(r.seq);
                    if r.seq == last {
                        return;
                    }
                }
                Some(event::Kind::Gap(g)) => gaps.push((g.from, g.to)),
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out; got {} records, gaps {gaps:?}", seqs.len()));
    (seqs, gaps)
}

fn stream_req(from_seq: u64) -> StreamRequest {
    StreamRequest {
        from_seq,
        heartbeat_ms: 100,
        disable_counters: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn health_reports_kernel_boot_and_decoded_taint() {
    let fx = Fixture::new();
    let agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let h = c.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(h.kernel_release, "6.12.57+deb12-amd64");
    assert_eq!(h.boot_id, "6f1c7c2a-0000-4000-8000-000000000001");
    assert_eq!(h.uptime_ms, 12_340);
    assert_eq!(h.taint_mask, 12416);
    assert_eq!(h.taint_flags, "DOE");
    assert_eq!(h.taint_names, ["DIE", "OOT_MODULE", "UNSIGNED_MODULE"]);
    assert!(h.agent_rss_bytes > 0);
    assert_eq!(h.agent_pid, agent.pid());
}

#[tokio::test]
async fn stream_delivers_records_in_order_with_heartbeats() {
    let fx = Fixture::new();
    fx.append_records(0, 100);
    fx.append_kmsg(b" SUBSYSTEM=vexfs\n");
    let agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let mut s = c.stream_events(stream_req(0)).await.unwrap().into_inner();
    let (seqs, gaps) = records_until(&mut s, 99).await;
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    assert!(gaps.is_empty());
    // Records appended while streaming arrive too, with their fields intact.
    fx.append_kmsg(b"3,100,987654,-,caller=C1;vexfs: new record\n");
    let ev = wait_for(
        &mut s,
        |e| matches!(&e.kind, Some(event::Kind::Kmsg(r)) if r.seq == 100),
    )
    .await;
    let Some(event::Kind::Kmsg(r)) = ev.kind else {
        unreachable!()
    };
    assert_eq!((r.level, r.ts_us, r.caller.as_str()), (3, 987_654, "C1"));
    assert_eq!(r.text, "vexfs: new record");
    let ev = wait_for(&mut s, |e| {
        matches!(e.kind, Some(event::Kind::Heartbeat(_)))
    })
    .await;
    let Some(event::Kind::Heartbeat(hb)) = ev.kind else {
        unreachable!()
    };
    assert_eq!(hb.last_seq, 100);
    assert_eq!(hb.boot_id, "6f1c7c2a-0000-4000-8000-000000000001");
}

#[tokio::test]
async fn resume_after_disconnect_loses_and_repeats_nothing() {
    let fx = Fixture::new();
    fx.append_records(0, 50);
    let agent = fx.spawn(&[]);
    let mut seen = Vec::new();
    {
        let mut c = agent.client().await;
        let mut s = c.stream_events(stream_req(0)).await.unwrap().into_inner();
        let (seqs, _) = records_until(&mut s, 49).await;
        seen.extend(seqs);
        // Dropping the client mid-stream is a disconnect.
    }
    fx.append_records(50, 120);
    let mut c = agent.client().await;
    let last = *seen.last().unwrap();
    let mut s = c
        .stream_events(stream_req(last + 1))
        .await
        .unwrap()
        .into_inner();
    let (seqs, gaps) = records_until(&mut s, 119).await;
    seen.extend(seqs);
    assert!(gaps.is_empty(), "{gaps:?}");
    assert_eq!(seen, (0..120).collect::<Vec<_>>());
}

#[tokio::test]
async fn overwritten_records_are_reported_as_gaps() {
    let fx = Fixture::new();
    // The ring has lost everything before 100, and 150..=159 went missing later.
    fx.append_records(100, 150);
    fx.append_records(160, 170);
    let agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let mut s = c.stream_events(stream_req(40)).await.unwrap().into_inner();
    let (seqs, gaps) = records_until(&mut s, 169).await;
    assert_eq!(gaps, vec![(40, 99), (150, 159)]);
    assert_eq!(seqs.len(), 60);
}

#[tokio::test]
async fn counters_sampled_in_stream_and_on_demand() {
    let fx = Fixture::new();
    let agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let mut s = c
        .stream_events(StreamRequest {
            counters_ms: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ev = wait_for(&mut s, |e| matches!(e.kind, Some(event::Kind::Counters(_)))).await;
    let Some(event::Kind::Counters(k)) = ev.kind else {
        unreachable!()
    };
    assert_eq!(k.meminfo_kb["MemTotal"], 4_000_000);
    assert_eq!(k.meminfo_kb["SUnreclaim"], 20_000);
    assert_eq!(k.slabs.len(), 2);
    assert_eq!(k.slabs[0].name, "vexfs_inode");
    assert_eq!(k.slabs[0].total_bytes, 16 * 512);
    assert_eq!(k.file_handles_allocated, 1024);
    assert_eq!(k.load1, 0.5);
    assert_eq!(k.pressure.len(), 1);
    assert_eq!(k.pressure[0].some_total_us, 1234);
    assert_eq!(k.vmstat.len(), 3);
    assert_eq!(k.taint_mask, 12416);

    // A sample on demand sees a grown counter and names a file it could not read.
    std::fs::write(fx.proc().join("meminfo"), common::meminfo(20_500)).unwrap();
    std::fs::remove_file(fx.proc().join("vmstat")).unwrap();
    fx.add_task(777, "mount", 'S');
    let k = c
        .sample_counters(SampleRequest {
            fd_watch: vec!["mount".into()],
            modules: vec!["vexfs".into(), "not_loaded".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(k.meminfo_kb["SUnreclaim"], 20_500);
    assert_eq!(k.unreadable, ["vmstat"]);
    assert!(
        k.process_fds
            .iter()
            .any(|p| p.pid == 777 && p.comm == "mount"),
        "{k:?}"
    );
    assert_eq!(k.processes, 1);
    // The module's /proc/modules line rides along (its refcount, for leak checks);
    // a module that is not loaded is absent.
    assert_eq!(k.modules.len(), 1, "{:?}", k.modules);
    assert_eq!(
        (k.modules[0].name.as_str(), k.modules[0].refcount),
        ("vexfs", 0)
    );
    assert_eq!(k.modules[0].state, "Live");
    // A reference taken shows in the next sample.
    std::fs::write(
        fx.proc().join("modules"),
        "vexfs 24576 3 - Live 0xffffffffc0a00000 (OE)\n",
    )
    .unwrap();
    let k = c
        .sample_counters(SampleRequest {
            modules: vec!["vexfs".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(k.modules[0].refcount, 3);
    assert!(k.process_fds.iter().all(|p| p.pid != 777), "{k:?}");
}

#[tokio::test]
async fn d_state_tasks_found_by_scan_and_kernel_notices_parsed() {
    let fx = Fixture::new();
    fx.add_task(4242, "vexfs_worker", 'D');
    fx.add_task(4243, "sleepy", 'S');
    let agent = fx.spawn(&["--dstate-ms", "300"]);
    let mut c = agent.client().await;
    let mut s = c.stream_events(stream_req(0)).await.unwrap().into_inner();
    let ev = wait_for(&mut s, |e| matches!(e.kind, Some(event::Kind::HungTask(_)))).await;
    let Some(event::Kind::HungTask(h)) = ev.kind else {
        unreachable!()
    };
    assert_eq!(h.source, HungSource::DstateScan as i32);
    assert_eq!((h.pid, h.comm.as_str()), (4242, "vexfs_worker"));
    assert_eq!(h.wchan, "__mutex_lock.constprop.0");
    assert_eq!(h.stack.len(), 2);
    assert!(h.stack[1].contains("vexfs_fault_deadlock"));

    fx.append_kmsg(b"3,5,8500000,-;INFO: task sh:99 blocked for more than 5 seconds.\n");
    let ev = wait_for(&mut s, |e| {
        matches!(&e.kind, Some(event::Kind::HungTask(h)) if h.source == HungSource::Kernel as i32)
    })
    .await;
    let Some(event::Kind::HungTask(h)) = ev.kind else {
        unreachable!()
    };
    assert_eq!(
        (h.pid, h.comm.as_str(), h.blocked_secs, h.kmsg_seq),
        (99, "sh", 5, 5)
    );
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group() {
    let fx = Fixture::new();
    let agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let pidfile = fx.dir.path().join("bg.pid");
    let script = format!(
        "sleep 30 & echo $! > {}; echo started; sleep 30",
        pidfile.display()
    );
    let r = c
        .exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script],
            timeout_ms: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.timed_out);
    assert_eq!(r.signal, 9);
    assert_eq!(r.stdout, b"started\n");
    assert!(
        r.duration_ms >= 500 && r.duration_ms < 5000,
        "{}",
        r.duration_ms
    );
    let bg: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The background sleep was in the group: it must be gone (or a zombie awaiting reap).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{bg}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next())
            });
        match state {
            None | Some('Z') => break,
            Some(_) if std::time::Instant::now() > deadline => panic!("background {bg} survived"),
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // Zero timeout means the default, and exit codes and stdin pass through.
    let r = c
        .exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "read x; echo got $x; exit 7".into(),
            ],
            stdin: b"hello\n".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.exit_code, r.timed_out), (7, false));
    assert_eq!(r.stdout, b"got hello\n");
    let flood = c
        .exec(ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "yes flood | head -c 50000000".into(),
            ],
            max_output_bytes: 4096,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flood.stdout.len(), 4096);
    assert!(flood.stdout_truncated);
    let empty = c.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn malformed_input_and_disconnects_do_not_hurt_the_agent() {
    let fx = Fixture::new();
    fx.append_kmsg(b"\xff\xfe garbage\n6,0,1,-;ok one\nno semicolon\n6,x,2,-;bad seq\n");
    fx.append_kmsg(b"6,1,2,-;bytes \xc3\x28 here\r\n");
    std::fs::remove_file(fx.proc().join("meminfo")).unwrap();
    std::fs::write(fx.proc().join("slabinfo"), b"\x00\x01 not slabinfo\n").unwrap();
    std::fs::write(fx.proc().join("sys/kernel/tainted"), b"lots\n").unwrap();
    fx.add_task(5000, "odd) (name", 'D');
    // A process that vanished between readdir and reading its stat.
    std::fs::create_dir_all(fx.proc().join("5001")).unwrap();
    let agent = fx.spawn(&["--dstate-ms", "100"]);
    let mut c = agent.client().await;
    // Many clients that vanish mid-stream.
    for _ in 0..20 {
        let mut c2 = agent.client().await;
        let mut s = c2.stream_events(stream_req(0)).await.unwrap().into_inner();
        let _ = s.next().await;
    }
    let mut s = c
        .stream_events(StreamRequest {
            counters_ms: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (seqs, gaps) = records_until(&mut s, 1).await;
    assert_eq!(seqs, [0, 1]);
    assert!(gaps.is_empty());
    let ev = wait_for(&mut s, |e| matches!(e.kind, Some(event::Kind::Counters(_)))).await;
    let Some(event::Kind::Counters(k)) = ev.kind else {
        unreachable!()
    };
    assert!(k.unreadable.contains(&"meminfo".to_string()));
    assert!(k.slabs.is_empty());
    assert_eq!(k.taint_mask, 0);
    let ev = wait_for(&mut s, |e| matches!(e.kind, Some(event::Kind::HungTask(_)))).await;
    let Some(event::Kind::HungTask(h)) = ev.kind else {
        unreachable!()
    };
    assert_eq!(h.comm, "odd) (name");
    let h = c.health(HealthRequest {}).await.unwrap().into_inner();
    assert_eq!(h.taint_flags, "");
    // sysrq: a bad key is refused, a good one reaches the trigger file.
    let bad = c
        .sysrq(SysrqRequest { key: "ww".into() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    c.sysrq(SysrqRequest { key: "w".into() }).await.unwrap();
    assert_eq!(
        std::fs::read(fx.proc().join("sysrq-trigger")).unwrap(),
        b"w"
    );
}

// ---- bad arguments: InvalidArgument or a bounded result, and the agent keeps answering ----

/// Longest status message the agent sends (service.rs MAX_MESSAGE) plus its cut marker.
const MAX_MESSAGE: usize = 1024 + "... (cut)".len();

/// The agent process is still running and answers Health promptly.
async fn assert_alive(agent: &mut AgentProcess, c: &mut AgentClient<Channel>, after: &str) {
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent exited after {after}"
    );
    let h = tokio::time::timeout(Duration::from_secs(5), c.health(HealthRequest {}))
        .await
        .unwrap_or_else(|_| panic!("Health timed out after {after}"))
        .unwrap_or_else(|e| panic!("Health failed after {after}: {e}"));
    assert_eq!(h.into_inner().agent_pid, agent.pid(), "after {after}");
}

/// Awaits a call that must fail promptly with `code` and a message containing `says`.
async fn refused<T: std::fmt::Debug>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    code: Code,
    says: &str,
    what: &str,
) -> Status {
    let err = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 5 s"))
        .map(|r| r.into_inner())
        .expect_err(what);
    assert_eq!(err.code(), code, "{what}: {err}");
    assert!(
        err.message().contains(says),
        "{what}: message {:?} lacks {says:?}",
        err.message()
    );
    assert!(
        err.message().len() <= MAX_MESSAGE,
        "{what}: {} byte message",
        err.message().len()
    );
    err
}

#[tokio::test]
async fn bad_module_paths_names_and_params_are_refused() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let mods = fx.modules_dir();
    let m = |rest: &str| format!("{}{rest}", mods.display());
    std::fs::write(fx.dir.path().join("evil.ko"), b"x").unwrap();
    std::os::unix::fs::symlink(fx.dir.path().join("evil.ko"), mods.join("escape.ko")).unwrap();
    std::os::unix::fs::symlink("/etc", mods.join("etc")).unwrap();
    std::fs::create_dir(fx.dir.path().join("mods-evil")).unwrap();
    std::fs::write(fx.dir.path().join("mods-evil/vexfs.ko"), b"x").unwrap();
    nix::unistd::mkfifo(
        &mods.join("fifo.ko"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let outside = "outside the allowed directories";
    let cases: Vec<(String, Code, &str)> = vec![
        ("/etc/passwd".into(), Code::InvalidArgument, outside),
        (m("/../evil.ko"), Code::InvalidArgument, outside),
        (
            m("/../../../../../../etc/shadow"),
            Code::InvalidArgument,
            outside,
        ),
        (m("/./sub/../../evil.ko"), Code::InvalidArgument, outside),
        (m("/escape.ko"), Code::InvalidArgument, outside),
        (m("/etc/passwd"), Code::InvalidArgument, outside),
        (m("-evil/vexfs.ko"), Code::InvalidArgument, outside),
        // Missing outside the allow-list is outside, not "not found".
        (
            "/nonexistent/vexfs.ko".into(),
            Code::InvalidArgument,
            outside,
        ),
        (m("/../nowhere/vexfs.ko"), Code::InvalidArgument, outside),
        (
            "relative/vexfs.ko".into(),
            Code::InvalidArgument,
            "must be absolute",
        ),
        (String::new(), Code::InvalidArgument, "empty"),
        (m("/vex\0fs.ko"), Code::InvalidArgument, "NUL"),
        (
            format!("/{}", "a".repeat(1 << 20)),
            Code::InvalidArgument,
            "longer than 4096",
        ),
        (m(""), Code::InvalidArgument, "not a regular file"),
        // A FIFO would block a plain open() forever, and with it a runtime worker.
        (m("/fifo.ko"), Code::InvalidArgument, "not a regular file"),
        (
            m("/vexfs.ko/sub.ko"),
            Code::InvalidArgument,
            "Not a directory",
        ),
        (m("/missing.ko"), Code::NotFound, "No such file"),
    ];
    for (path, code, says) in &cases {
        let shown: String = path.chars().take(80).collect();
        let load = LoadModuleRequest {
            path: path.clone(),
            params: String::new(),
        };
        refused(c.load_module(load), *code, says, &format!("load {shown:?}")).await;
        let reload = ReloadModuleRequest {
            name: "vexfs".into(),
            path: path.clone(),
            ..Default::default()
        };
        refused(
            c.reload_module(reload),
            *code,
            says,
            &format!("reload {shown:?}"),
        )
        .await;
        assert_alive(&mut agent, &mut c, &format!("load/reload {shown:?}")).await;
    }

    let good = mods.join("vexfs.ko").display().to_string();
    let load = |params: String| LoadModuleRequest {
        path: good.clone(),
        params,
    };
    for (params, says) in [
        ("x".repeat(1 << 20), "1048576 bytes, longer than 4096"),
        ("x".repeat(4097), "longer than 4096"),
        ("a=1\0b=2".into(), "control byte 0x00 at offset 3"),
        ("a=\x1b[31mred".into(), "control byte 0x1b at offset 2"),
        ("a=1\rb=2".into(), "control byte 0x0d"),
    ] {
        let what = format!("params of {} bytes", params.len());
        refused(
            c.load_module(load(params.clone())),
            Code::InvalidArgument,
            says,
            &what,
        )
        .await;
        let reload = ReloadModuleRequest {
            name: "vexfs".into(),
            path: good.clone(),
            params,
            deadline_ms: 1000,
        };
        refused(c.reload_module(reload), Code::InvalidArgument, says, &what).await;
        assert_alive(&mut agent, &mut c, &what).await;
    }
    // Beyond gRPC's 4 MiB message limit the server refuses before the handler runs.
    let says = "decoded message length too large";
    let huge = load("x".repeat(5 << 20));
    refused(c.load_module(huge), Code::OutOfRange, says, "5 MiB params").await;
    assert_alive(&mut agent, &mut c, "5 MiB params").await;
    // Printable non-ASCII text and whitespace are the kernel's to judge: the file is not
    // an ELF, so the kernel refuses it and the reply says so (a bounded result).
    let started = Instant::now();
    let r = c
        .load_module(load("name=caf\u{e9}\tn=1\nq=\"a b\"".into()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, ModuleOutcome::Failed as i32, "{r:?}");
    assert!(r.detail.starts_with("load: "), "{}", r.detail);
    assert!(started.elapsed() < Duration::from_secs(5));

    for name in [
        String::new(),
        "../vexfs".into(),
        "vex\0fs".into(),
        "vexfs fs".into(),
        "a".repeat(56),
        "a".repeat(1 << 20),
    ] {
        let what = format!("module name of {} bytes", name.len());
        let unload = UnloadModuleRequest {
            name: name.clone(),
            deadline_ms: u32::MAX,
            force: true,
        };
        refused(
            c.unload_module(unload),
            Code::InvalidArgument,
            "module name",
            &what,
        )
        .await;
        // Refused before anything is unloaded (it used to load, then wait 5 s to verify).
        let reload = ReloadModuleRequest {
            name,
            path: good.clone(),
            ..Default::default()
        };
        refused(
            c.reload_module(reload),
            Code::InvalidArgument,
            "module name",
            &what,
        )
        .await;
        assert_alive(&mut agent, &mut c, &what).await;
    }

    let list = c
        .list_modules(ListModulesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["vexfs", "vsock"]);
    assert_eq!(list.modules[0].taint, "OE");
    assert_eq!(list.modules[1].holders, ["vmw_vsock_virtio_transport"]);
}

fn exec(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_with_bad_arguments_is_refused_or_bounded() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;

    // Timeouts: 0 is the default (60 s), u64::MAX is capped at a day; both just run.
    for timeout_ms in [0, u64::MAX, u64::MAX / 2] {
        let mut q = exec(&["sh", "-c", "sleep 0.2; echo done"]);
        q.timeout_ms = timeout_ms;
        let started = Instant::now();
        let r = c.exec(q).await.unwrap().into_inner();
        assert_eq!(
            (r.exit_code, r.timed_out),
            (0, false),
            "timeout {timeout_ms}"
        );
        assert_eq!(r.stdout, b"done\n");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The smallest timeout kills at once and says so.
    let mut q = exec(&["sleep", "10"]);
    q.timeout_ms = 1;
    let r = c.exec(q).await.unwrap().into_inner();
    assert!(r.timed_out && r.signal == 9, "{r:?}");
    assert!(r.duration_ms < 2000, "{}", r.duration_ms);

    let big = "a".repeat(200 << 10);
    let with_env = |env: Vec<String>| ExecRequest {
        env,
        ..exec(&["true"])
    };
    let in_dir = |cwd: &str| ExecRequest {
        cwd: cwd.into(),
        ..exec(&["true"])
    };
    let mut long_argv = vec!["echo".to_string()];
    long_argv.extend(std::iter::repeat_n("a".repeat(100 << 10), 11));
    let big_env = (0..20)
        .map(|i| format!("K{i}={}", "v".repeat(60 << 10)))
        .collect();
    let cases: Vec<(ExecRequest, Code, &str)> = vec![
        (exec(&[]), Code::InvalidArgument, "argv is empty"),
        (exec(&[""]), Code::InvalidArgument, "argv is empty"),
        (exec(&["true"; 5000]), Code::InvalidArgument, "at most 4096"),
        (
            exec(&["echo", &big]),
            Code::InvalidArgument,
            "204800 bytes, longer than 131071",
        ),
        (
            ExecRequest {
                argv: long_argv,
                ..Default::default()
            },
            Code::InvalidArgument,
            "in all, more than 1048576",
        ),
        (
            with_env(vec!["K=v".into(); 5000]),
            Code::InvalidArgument,
            "at most 4096",
        ),
        (
            with_env(vec![format!("K={big}")]),
            Code::InvalidArgument,
            "longer than 131071",
        ),
        (with_env(big_env), Code::InvalidArgument, "in all"),
        (
            with_env(vec![big.clone()]),
            Code::InvalidArgument,
            "longer than",
        ),
        (
            with_env(vec!["NOEQUALS".into()]),
            Code::InvalidArgument,
            "is not KEY=VALUE",
        ),
        (
            with_env(vec!["=v".into()]),
            Code::InvalidArgument,
            "is not KEY=VALUE",
        ),
        (exec(&["echo", "a\0b"]), Code::InvalidArgument, "NUL"),
        (
            in_dir("/nonexistent/dir"),
            Code::InvalidArgument,
            "cwd /nonexistent/dir",
        ),
        (
            in_dir("/etc/passwd"),
            Code::InvalidArgument,
            "is not a directory",
        ),
        (in_dir("/x\0y"), Code::InvalidArgument, "without NUL"),
        (
            exec(&["/nonexistent/cmd"]),
            Code::NotFound,
            "cannot start /nonexistent/cmd",
        ),
    ];
    for (q, code, says) in cases {
        let what = format!(
            "exec of {} argv / {} env entries, cwd {:?}",
            q.argv.len(),
            q.env.len(),
            q.cwd
        );
        refused(c.exec(q), code, says, &what).await;
        assert_alive(&mut agent, &mut c, &what).await;
    }
    // Over gRPC's 4 MiB request limit: refused before the handler, agent unharmed.
    let huge = ExecRequest {
        argv: vec!["x".repeat(100 << 10); 50],
        ..Default::default()
    };
    let says = "decoded message length too large";
    refused(c.exec(huge), Code::OutOfRange, says, "a 5 MiB exec request").await;
    assert_alive(&mut agent, &mut c, "a 5 MiB exec request").await;
    // Megabyte inputs never come back as megabyte messages.
    let err = refused(
        c.sysrq(SysrqRequest {
            key: "k".repeat(1 << 20),
        }),
        Code::InvalidArgument,
        "sysrq key must be one letter",
        "1 MiB sysrq key",
    )
    .await;
    assert!(err.message().ends_with("... (cut)"), "{}", err.message());
    assert_alive(&mut agent, &mut c, "1 MiB sysrq key").await;
}

#[tokio::test]
async fn exec_output_floods_come_back_capped_with_bounded_agent_memory() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let before_kib = agent.hwm_kib();
    // 200 MB through stdout: the default cap (1 MiB) is kept, the rest read and dropped.
    let started = Instant::now();
    let r = c
        .exec(exec(&["head", "-c", "200M", "/dev/zero"]))
        .await
        .unwrap()
        .into_inner();
    let flood_s = started.elapsed().as_secs_f64();
    assert_eq!((r.exit_code, r.timed_out), (0, false), "{r:?}");
    assert_eq!(r.stdout.len(), 1 << 20);
    assert!(r.stdout_truncated && !r.stderr_truncated);
    assert!(flood_s < 30.0, "{flood_s} s");
    // The largest cap on both streams at once still fits the client's default 4 MiB
    // message limit (a 16 MiB cap made this reply undecodable).
    let mut q = exec(&[
        "sh",
        "-c",
        "head -c 100M /dev/zero & head -c 100M /dev/zero >&2; wait",
    ]);
    q.max_output_bytes = u64::MAX;
    let r = c.exec(q).await.unwrap().into_inner();
    assert_eq!(r.stdout.len(), 3 << 19);
    assert_eq!(r.stderr.len(), 3 << 19);
    assert!(r.stdout_truncated && r.stderr_truncated);
    // An endless flood ends at the timeout, capped the same way.
    let mut q = exec(&["yes"]);
    q.timeout_ms = 2000;
    let r = c.exec(q).await.unwrap().into_inner();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.stdout.len(), 1 << 20);
    assert!(r.stdout.starts_with(b"y\ny\n") && r.stdout_truncated);
    assert!(r.duration_ms < 10_000, "{}", r.duration_ms);
    assert_alive(&mut agent, &mut c, "output floods").await;
    let hwm_kib = agent.hwm_kib();
    eprintln!(
        "agent VmHWM {before_kib} KiB before the floods, {hwm_kib} KiB after; 200 MB flood took {flood_s:.2} s"
    );
    assert!(hwm_kib > 0, "VmHWM unreadable");
    assert!(
        hwm_kib < 40 << 10,
        "agent VmHWM {hwm_kib} KiB after the floods"
    );
}

#[tokio::test]
async fn stream_periods_are_clamped_and_watch_lists_bounded() {
    let fx = Fixture::new();
    fx.append_records(0, 3);
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;

    // 1 ms asks for 1000 beats a second; the agent's floor is 10 ms.
    let mut s = c
        .stream_events(StreamRequest {
            heartbeat_ms: 1,
            counters_ms: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut beats, mut samples) = (0u32, 0u32);
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(1) {
        match tokio::time::timeout(Duration::from_secs(1), s.next()).await {
            Ok(Some(Ok(ev))) => match ev.kind {
                Some(event::Kind::Heartbeat(_)) => beats += 1,
                Some(event::Kind::Counters(_)) => samples += 1,
                _ => {}
            },
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => break,
        }
    }
    drop(s);
    eprintln!("1 ms periods: {beats} heartbeats, {samples} samples in 1 s");
    assert!((5..=110).contains(&beats), "{beats} heartbeats in 1 s");
    assert!((1..=110).contains(&samples), "{samples} samples in 1 s");
    assert_alive(&mut agent, &mut c, "1 ms periods").await;

    // Zero is the default (1 s) and u32::MAX is capped: both streams deliver records
    // and a first heartbeat at once.
    for ms in [0, u32::MAX] {
        let mut s = c
            .stream_events(StreamRequest {
                heartbeat_ms: ms,
                counters_ms: ms,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        // The first heartbeat may come before or between the records.
        let (mut seqs, mut beat) = (Vec::new(), false);
        while seqs.len() < 3 || !beat {
            match wait_for(&mut s, |_| true).await.kind {
                Some(event::Kind::Kmsg(r)) => seqs.push(r.seq),
                Some(event::Kind::Heartbeat(_)) => beat = true,
                _ => {}
            }
        }
        assert_eq!(seqs, [0, 1, 2], "{ms} ms periods");
        assert_alive(&mut agent, &mut c, &format!("{ms} ms periods")).await;
    }
    // A resume point far past the ring: heartbeats, no records, no error.
    let mut s = c
        .stream_events(stream_req(u64::MAX))
        .await
        .unwrap()
        .into_inner();
    let ev = wait_for(&mut s, |e| {
        matches!(
            e.kind,
            Some(event::Kind::Heartbeat(_)) | Some(event::Kind::Kmsg(_))
        )
    })
    .await;
    assert!(matches!(ev.kind, Some(event::Kind::Heartbeat(_))), "{ev:?}");

    for (watch, says) in [
        (vec!["sh".to_string(); 65], "65 names, more than 64"),
        (vec!["x".repeat(1 << 20)], "must be 1 to 15 bytes"),
        (vec![String::new()], "must be 1 to 15 bytes"),
    ] {
        let what = format!("fd_watch of {} names", watch.len());
        let req = StreamRequest {
            fd_watch: watch.clone(),
            ..Default::default()
        };
        refused(c.stream_events(req), Code::InvalidArgument, says, &what).await;
        let req = SampleRequest {
            fd_watch: watch,
            ..Default::default()
        };
        refused(c.sample_counters(req), Code::InvalidArgument, says, &what).await;
        assert_alive(&mut agent, &mut c, &what).await;
    }
    for (modules, says) in [
        (vec!["m".to_string(); 65], "65 names, more than 64"),
        (vec!["../vexfs".to_string()], "must be 1 to 55 letters"),
        (vec!["x".repeat(1 << 20)], "must be 1 to 55 letters"),
    ] {
        let what = format!("modules of {} names", modules.len());
        let req = SampleRequest {
            modules,
            ..Default::default()
        };
        refused(c.sample_counters(req), Code::InvalidArgument, says, &what).await;
        assert_alive(&mut agent, &mut c, &what).await;
    }
}

#[tokio::test]
async fn vsock_probe_speaks_enough_http2_to_tell_accepted_from_refused() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    // The probe's judgement against the real server, over the unix socket (never vsock
    // on the development machine).
    let socket = agent.socket.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        vexfs_agent::probe::judge(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(verdict, vexfs_agent::probe::Verdict::Accepted);
    assert_alive(&mut agent, &mut c, "a raw HTTP/2 probe").await;
    // Bad probe arguments are a usage error (exit 2) before any socket is opened.
    for args in [
        &["probe-vsock"][..],
        &["probe-vsock", "1"],
        &["probe-vsock", "x", "5000"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vexfs-agent"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("probe-vsock"), "{args:?}: {err}");
    }
}

// ---- KillProcess: the real kill(2) on the test's own children, their state read from
// the fake /proc tree (where a test can make a process look stuck in the kernel) ----

/// A child `sleep 30` of this test, optionally leading its own process group.
fn sleeper(own_group: bool) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30");
    if own_group {
        cmd.process_group(0);
    }
    cmd.spawn().expect("spawn sleep")
}

/// Waits (at most 5 s) for `child` to exit and returns the signal that ended it.
fn killed_by(child: &mut std::process::Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.signal();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill_req(pid: u32, wait_ms: u32) -> KillProcessRequest {
    KillProcessRequest {
        pid,
        wait_ms,
        ..Default::default()
    }
}

#[tokio::test]
async fn kill_process_kills_and_waits_until_gone() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    // A process that dies at SIGKILL: gone at once, and really killed.
    let mut child = sleeper(false);
    let r = c
        .kill_process(kill_req(child.id(), 2000))
        .await
        .unwrap()
        .into_inner();
    assert!(r.gone && r.existed, "{r:?}");
    assert!(r.stuck.is_none() && r.state.is_empty(), "{r:?}");
    assert!(r.waited_ms < 2000, "{r:?}");
    assert_eq!(killed_by(&mut child), Some(9));
    // SIGTERM to a whole group: every member gets it.
    let mut leader = sleeper(true);
    let r = c
        .kill_process(KillProcessRequest {
            pid: leader.id(),
            signal: 15,
            process_group: true,
            wait_ms: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.gone && r.existed, "{r:?}");
    assert_eq!(killed_by(&mut leader), Some(15));
    // A pid nobody has: gone, and said never to have existed.
    let mut dead = sleeper(false);
    let dead_pid = dead.id();
    dead.kill().unwrap();
    dead.wait().unwrap();
    let r = c
        .kill_process(kill_req(dead_pid, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(r.gone && !r.existed, "{r:?}");
    // A process that takes a while to go (still 'D', then a zombie): waited for.
    let mut slow = sleeper(false);
    fx.add_task(slow.id(), "vexfs_slow", 'D');
    let stat = fx.proc().join(slow.id().to_string()).join("stat");
    let zombie = std::fs::read_to_string(&stat)
        .unwrap()
        .replace(") D ", ") Z ");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(stat, zombie).unwrap();
    });
    let r = c
        .kill_process(kill_req(slow.id(), 5000))
        .await
        .unwrap()
        .into_inner();
    writer.join().unwrap();
    assert!(r.gone, "{r:?}");
    assert!((300..5000).contains(&r.waited_ms), "{r:?}");
    assert_eq!(killed_by(&mut slow), Some(9));
    assert_alive(&mut agent, &mut c, "kills").await;
}

#[tokio::test]
async fn kill_process_reports_where_a_survivor_sleeps() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    // The fake /proc says the process sleeps uninterruptibly in the module.
    let mut child = sleeper(false);
    fx.add_task(child.id(), "vexfs_writer", 'D');
    let started = Instant::now();
    let r = c
        .kill_process(kill_req(child.id(), 300))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.gone && r.existed, "{r:?}");
    assert_eq!(r.state, "D");
    assert!(r.waited_ms >= 300, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let stuck = r.stuck.expect("the survivor described");
    assert_eq!(stuck.source, HungSource::KillProcess as i32);
    assert_eq!(
        (stuck.pid, stuck.comm.as_str()),
        (child.id(), "vexfs_writer")
    );
    assert_eq!(stuck.wchan, "__mutex_lock.constprop.0");
    assert!(stuck.stack[1].contains("vexfs_fault_deadlock"), "{stuck:?}");
    // The signal was sent all the same.
    assert_eq!(killed_by(&mut child), Some(9));
    // A group with a stuck member names that member.
    let mut leader = sleeper(true);
    fx.add_task(leader.id(), "vexfs_group", 'D');
    let r = c
        .kill_process(KillProcessRequest {
            pid: leader.id(),
            process_group: true,
            wait_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.gone, "{r:?}");
    assert_eq!(r.stuck.unwrap().comm, "vexfs_group");
    assert_eq!(killed_by(&mut leader), Some(9));
    assert_alive(&mut agent, &mut c, "stuck kills").await;
}

#[tokio::test]
async fn kill_process_refuses_init_itself_and_bad_signals() {
    let fx = Fixture::new();
    let mut agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let me = agent.pid();
    for (req, says) in [
        (kill_req(0, 0), "pid 0"),
        (kill_req(1, 0), "pid 1 is init"),
        (kill_req(me, 0), "the agent itself"),
        (kill_req(u32::MAX, 0), "above the kernel's limit"),
        (
            KillProcessRequest {
                pid: 4242,
                signal: 99,
                ..Default::default()
            },
            "signal 99 is not one of 1..31",
        ),
    ] {
        let what = format!("{req:?}");
        refused(c.kill_process(req), Code::InvalidArgument, says, &what).await;
        assert_alive(&mut agent, &mut c, &what).await;
    }
}
