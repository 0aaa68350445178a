//! Benchmark (not a test): kmsg streaming throughput and latency of the real agent
//! binary on a unix socket, and its RSS while streaming.
//!
//! Run: `cargo bench -p vexfs-agent --bench kmsg_stream` (add `-- RECORDS` to change the
//! backlog size). Prints one line per figure; BENCHMARKS.md keeps the numbers.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use vexfs_proto::{StreamRequest, event};

fn kernel_like_line(seq: u64) -> String {
    format!(
        "6,{seq},{},-,caller=T{};vexfs: vexfs_write: ino {} off {} len 4096 ok\n",
        seq * 37,
        seq % 97,
        seq % 1000,
        seq * 4096
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let fx = common::Fixture::new();
    let mut backlog = String::with_capacity(records as usize * 80);
    for seq in 0..records {
        backlog.push_str(&kernel_like_line(seq));
    }
    fx.append_kmsg(backlog.as_bytes());
    let agent = fx.spawn(&[]);
    let mut client = agent.client().await;
    let rss_idle = agent.rss_kib();

    // Throughput: drain a backlog of `records` records.
    let cpu_before = common::cpu_time(agent.pid());
    let started = Instant::now();
    let mut stream = client
        .stream_events(StreamRequest {
            from_seq: 0,
            disable_counters: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let mut got = 0u64;
    let mut rss_peak_sampled = 0;
    while got < records {
        match stream.next().await {
            Some(Ok(ev)) => {
                if let Some(event::Kind::Kmsg(r)) = ev.kind {
                    assert_eq!(r.seq, got, "out of order or lost");
                    got += 1;
                    if got.is_multiple_of(100_000) {
                        rss_peak_sampled = rss_peak_sampled.max(agent.rss_kib());
                    }
                }
            }
            other => panic!("stream ended early: {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let drain_cpu = common::cpu_time(agent.pid()) - cpu_before;
    let rate = records as f64 / elapsed.as_secs_f64();

    // Latency: append one record at a time and time its arrival on the live stream.
    let mut lat = Vec::new();
    for i in 0..200 {
        let seq = records + i;
        let t0 = Instant::now();
        fx.append_kmsg(kernel_like_line(seq).as_bytes());
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("latency record never arrived")
                .expect("stream ended")
                .expect("stream error");
            if matches!(ev.kind, Some(event::Kind::Kmsg(ref r)) if r.seq == seq) {
                break;
            }
        }
        lat.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];

    // Latency through a FIFO: the reader sleeps in poll() and wakes on each write, the
    // same path as /dev/kmsg (a plain file is polled every few ms instead).
    let fifo_fx = common::Fixture::new();
    std::fs::remove_file(fifo_fx.kmsg()).expect("rm kmsg");
    nix::unistd::mkfifo(&fifo_fx.kmsg(), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let fifo_agent = fifo_fx.spawn(&[]);
    let mut fifo_client = fifo_agent.client().await;
    let mut fifo_stream = fifo_client
        .stream_events(StreamRequest {
            disable_counters: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let path = fifo_fx.kmsg();
    let mut writer = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open fifo")
    })
    .await
    .expect("join");
    let mut fifo_lat = Vec::new();
    for seq in 0..200u64 {
        use std::io::Write;
        let t0 = Instant::now();
        writer
            .write_all(kernel_like_line(seq).as_bytes())
            .expect("write fifo");
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), fifo_stream.next())
                .await
                .expect("fifo record never arrived")
                .expect("stream ended")
                .expect("stream error");
            if matches!(ev.kind, Some(event::Kind::Kmsg(ref r)) if r.seq == seq) {
                break;
            }
        }
        fifo_lat.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Idle cost, on the FIFO agent (it sleeps in poll() like on /dev/kmsg; a plain
    // file is polled every 5 ms): a stream open with heartbeats and counter samples
    // every second, no kernel log traffic: what the agent costs a guest between crashes.
    let mut idle_stream = fifo_client
        .stream_events(StreamRequest {
            from_seq: 200,
            heartbeat_ms: 1000,
            counters_ms: 1000,
            ..Default::default()
        })
        .await
        .expect("idle stream")
        .into_inner();
    let idle_for = Duration::from_secs(10);
    let cpu_idle_before = common::cpu_time(fifo_agent.pid());
    let idle_end = Instant::now() + idle_for;
    let mut idle_events = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(idle_end.into(), idle_stream.next()).await {
        idle_events += 1;
    }
    let idle_cpu = common::cpu_time(fifo_agent.pid()) - cpu_idle_before;
    drop(idle_stream);
    fifo_lat.sort();
    let fpct = |p: f64| fifo_lat[((fifo_lat.len() as f64 - 1.0) * p) as usize];

    println!("kmsg_stream records={records}");
    println!(
        "throughput: {rate:.0} records/s ({:.2} s for the backlog)",
        elapsed.as_secs_f64()
    );
    println!(
        "latency (file append -> client, 200 samples): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "latency (FIFO write -> client, poll wake-up like /dev/kmsg, 200 samples): p50 {:.3} ms, p99 {:.3} ms",
        fpct(0.5).as_secs_f64() * 1e3,
        fpct(0.99).as_secs_f64() * 1e3
    );
    println!(
        "agent CPU: {:.2} s for the backlog ({:.2} us/record, {:.0}% of one core while draining); \
         idle with heartbeats and counters every 1 s: {:.2}% of one core ({idle_events} events in {} s)",
        drain_cpu.as_secs_f64(),
        drain_cpu.as_secs_f64() * 1e6 / records as f64,
        drain_cpu.as_secs_f64() * 100.0 / elapsed.as_secs_f64(),
        idle_cpu.as_secs_f64() * 100.0 / idle_for.as_secs_f64(),
        idle_for.as_secs()
    );
    println!(
        "agent RSS: idle {} KiB, while streaming (sampled max) {} KiB, peak (VmHWM) {} KiB",
        rss_idle,
        rss_peak_sampled,
        agent.hwm_kib()
    );
}
