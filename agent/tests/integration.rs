//! Integration tests: the real agent binary on a unix socket, a fake kernel log and
//! /proc tree, driven by the real generated client.

mod common;

use std::time::Duration;

use common::Fixture;
use tokio_stream::StreamExt;
use vexfs_proto::{
    Event, ExecRequest, HealthRequest, HungSource, ListModulesRequest, LoadModuleRequest,
    ReloadModuleRequest, SampleRequest, StreamRequest, SysrqRequest, UnloadModuleRequest, event,
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
    std::fs::write(
        fx.proc().join("meminfo"),
        "MemTotal: 4000000 kB\nSUnreclaim: 20500 kB\n",
    )
    .unwrap();
    std::fs::remove_file(fx.proc().join("vmstat")).unwrap();
    fx.add_task(777, "mount", 'S');
    let k = c
        .sample_counters(SampleRequest {
            fd_watch: vec!["mount".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(k.meminfo_kb["SUnreclaim"], 20_500);
    assert_eq!(k.unreadable, ["vmstat"]);
    assert!(
        k.process_fds
            .iter()
            .any(|p| p.pid == 777 && p.comm == "mount")
    );
    assert_eq!(k.processes, 1);
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
async fn module_paths_outside_the_allow_list_are_refused() {
    let fx = Fixture::new();
    let agent = fx.spawn(&[]);
    let mut c = agent.client().await;
    let mods = fx.modules_dir();
    std::fs::write(fx.dir.path().join("evil.ko"), b"x").unwrap();
    for path in [
        "/etc/passwd".to_string(),
        format!("{}/../evil.ko", mods.display()),
        "relative/vexfs.ko".to_string(),
    ] {
        let err = c
            .load_module(LoadModuleRequest {
                path: path.clone(),
                params: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{path}: {err}");
    }
    let huge = c
        .load_module(LoadModuleRequest {
            path: mods.join("vexfs.ko").display().to_string(),
            params: "x".repeat(100_000),
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    let bad_name = c
        .unload_module(UnloadModuleRequest {
            name: "../vexfs".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);
    let reload = c
        .reload_module(ReloadModuleRequest {
            name: "vexfs".into(),
            path: "/etc/passwd".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reload.code(), tonic::Code::InvalidArgument);

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
