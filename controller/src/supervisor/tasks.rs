//! The watcher's tasks: one per signal (console, agent stream, QMP events, process
//! exits, the QMP probe) and the judge that turns their state into verdicts.

use super::state::{Shared, State, lock};
use super::*;

/// Feeds text or kmsg records to a classifier; returns the reports it completed, plus,
/// when the input has gone idle, the report still open (looked at by reference, so the
/// real completion later dedupes against it).
pub(super) struct LiveClassifier {
    inner: Classifier,
}

impl LiveClassifier {
    pub(super) fn new() -> Self {
        Self {
            inner: Classifier::new(),
        }
    }

    pub(super) fn feed(&mut self, line: &str) -> Vec<CrashReport> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.inner.feed(&bytes)
    }

    /// One agent kmsg record, its fields used as they are.
    pub(super) fn feed_record(&mut self, r: &vexfs_proto::KmsgRecord) -> Vec<CrashReport> {
        self.inner.feed_record(r.into())
    }

    pub(super) fn idle(&self) -> Vec<CrashReport> {
        self.inner.pending().into_iter().collect()
    }
}

/// Sends the reports whose signature is new in this boot.
pub(super) async fn report(
    state: &Shared,
    tx: &mpsc::Sender<Observation>,
    reports: Vec<CrashReport>,
    source: CrashSource,
) -> bool {
    for r in reports {
        let boot_id = {
            let mut s = lock(state);
            let key = (s.current_boot_id.clone(), r.signature.clone());
            if !s.seen.insert(key) {
                continue;
            }
            s.current_boot_id.clone()
        };
        let obs = Observation::Crash {
            report: Box::new(r),
            source,
            boot_id,
            at: Instant::now(),
        };
        if tx.send(obs).await.is_err() {
            return false;
        }
    }
    true
}

pub(super) fn console_task(
    vm: &Vm,
    state: Shared,
    tx: mpsc::Sender<Observation>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut lines = vm.console().subscribe();
    async move {
        let mut classifier = LiveClassifier::new();
        let mut dirty = false;
        loop {
            let line = match tokio::time::timeout(IDLE_FLUSH, lines.recv()).await {
                Ok(Ok(line)) => line,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                    tracing::warn!("console watcher lagged {n} lines");
                    continue;
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    if dirty {
                        dirty = false;
                        if !report(&state, &tx, classifier.idle(), CrashSource::Console).await {
                            return;
                        }
                    }
                    continue;
                }
            };
            if line.source != Source::Serial {
                continue;
            }
            {
                let mut s = lock(&state);
                s.last_console = Some(Instant::now());
                if line.text.contains(PANIC_LINE) {
                    s.panic_seen = true;
                }
                if s.excerpt.len() == EXCERPT_LINES {
                    s.excerpt.pop_front();
                }
                s.excerpt.push_back(line.text.clone());
            }
            dirty = true;
            let done = classifier.feed(&line.text);
            if !report(&state, &tx, done, CrashSource::Console).await {
                return;
            }
        }
    }
}

pub(super) async fn agent_task(
    addr: Address,
    state: Shared,
    tx: mpsc::Sender<Observation>,
    opts: WatchOptions,
) {
    let mut classifier = LiveClassifier::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut client = AgentClient::connect(&addr).await?;
            let health = client.health().await?;
            {
                let mut s = lock(&state);
                if s.link == Link::Reset {
                    s.link = Link::Reconnected;
                }
                s.current_boot_id = health.boot_id.clone();
                if health.agent_pid != s.agent_pid && health.boot_id == s.boot_id {
                    s.agent_restarted = true;
                }
                s.agent_pid = health.agent_pid;
            }
            // Resume after the last record or gap seen, so nothing is delivered twice.
            let from_seq = lock(&state).next_seq;
            let req = StreamRequest {
                from_seq,
                heartbeat_ms: u32::try_from(opts.timeouts.heartbeat.as_millis()).unwrap_or(1000),
                counters_ms: opts
                    .counters
                    .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(1000)),
                disable_counters: opts.counters.is_none(),
                fd_watch: opts.fd_watch.clone(),
            };
            let stream = client.stream_events(req).await?;
            Ok::<_, crate::client::ClientError>(stream)
        };
        let mut stream = match attempt.await {
            Ok(s) => {
                backoff = Duration::from_millis(100);
                s
            }
            Err(e) => {
                tracing::debug!("agent stream: {e}");
                lock(&state).link = Link::Reset;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut dirty = false;
        loop {
            let msg = match tokio::time::timeout(IDLE_FLUSH, stream.message()).await {
                Ok(m) => m,
                Err(_) => {
                    if dirty {
                        dirty = false;
                        if !report(&state, &tx, classifier.idle(), CrashSource::Kmsg).await {
                            return;
                        }
                    }
                    continue;
                }
            };
            let ev = match msg {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => {
                    lock(&state).link = Link::Reset;
                    break;
                }
            };
            // Any event shows the agent alive, not only a heartbeat: behind a backlog
            // of records (a controller busy with many guests) the heartbeat waits its
            // turn in the same stream, while the records ahead of it keep arriving.
            let now = Instant::now();
            lock(&state).last_alive = Some(now);
            let obs = match ev.kind {
                Some(event::Kind::Heartbeat(hb)) => {
                    let mut s = lock(&state);
                    if let Some(prev) = s.last_beat {
                        let gap = now.saturating_duration_since(prev);
                        s.stream.max_heartbeat_gap = s.stream.max_heartbeat_gap.max(gap);
                    }
                    s.stream.heartbeats += 1;
                    s.last_beat = Some(now);
                    if !hb.boot_id.is_empty() {
                        s.current_boot_id = hb.boot_id;
                    }
                    None
                }
                Some(event::Kind::Kmsg(r)) => {
                    lock(&state).record(r.seq);
                    dirty = true;
                    let done = classifier.feed_record(&r);
                    if !report(&state, &tx, done, CrashSource::Kmsg).await {
                        return;
                    }
                    None
                }
                Some(event::Kind::HungTask(h)) => {
                    lock(&state).stuck_pid = Some(h.pid);
                    Some(Observation::Hung(h))
                }
                Some(event::Kind::Counters(c)) => Some(Observation::Counters(Box::new(c))),
                Some(event::Kind::Gap(g)) => {
                    lock(&state).gap(g.from, g.to);
                    Some(Observation::Gap {
                        from: g.from,
                        to: g.to,
                    })
                }
                None => None,
            };
            if let Some(obs) = obs
                && tx.send(obs).await.is_err()
            {
                return;
            }
        }
    }
}

/// Mirrors the VM's folded QMP run state ([`crate::vm::GuestEvents`], the one place
/// events become state) into the watcher's state.
pub(super) fn qmp_task(
    vm: &Vm,
    state: Shared,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut events = vm.guest_events();
    async move {
        loop {
            // Any event proves QEMU answers, so it may replace the probe's Unknown.
            let now = events.borrow_and_update().state;
            lock(&state).vm_state = now;
            if events.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Marks the state with `mark` when the process behind `exit` (QEMU, the vsock
/// daemon) exits.
pub(super) async fn exit_task(
    mut exit: tokio::sync::watch::Receiver<Option<std::process::ExitStatus>>,
    state: Shared,
    mark: fn(&mut State, std::process::ExitStatus),
) {
    loop {
        if let Some(status) = *exit.borrow_and_update() {
            mark(&mut lock(&state), status);
            return;
        }
        if exit.changed().await.is_err() {
            return;
        }
    }
}

/// While the agent is late, asks QEMU for its status: a QEMU that does not answer
/// (SIGSTOPped, its main loop wedged) is a frozen VMM, which a QMP `stop` (a frozen
/// guest) or a hung kernel is not.
pub(super) fn qmp_probe_task(
    vm: &Vm,
    state: Shared,
    timeouts: Timeouts,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let qmp = vm.qmp_handle();
    async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let late = lock(&state)
                .last_alive
                .is_none_or(|t| t.elapsed() >= timeouts.heartbeat * 3);
            if !late {
                continue;
            }
            let answered = qmp.query_status_timeout(QMP_PROBE_TIMEOUT).await;
            let mut s = lock(&state);
            match answered {
                Err(crate::vm::qmp::QmpError::Timeout(_)) => {
                    if s.qemu_exited.is_none() && s.vm_state != VmState::GuestPanicked {
                        s.vm_state = VmState::Unknown;
                    }
                }
                Ok(status) if s.vm_state == VmState::Unknown => {
                    s.vm_state = if status.running {
                        VmState::Running
                    } else {
                        VmState::Paused
                    };
                }
                // Closed or refused: QEMU is exiting, which the exit watch reports.
                Ok(_) | Err(_) => {}
            }
        }
    }
}

pub(super) async fn judge_task(state: Shared, tx: mpsc::Sender<Observation>, timeouts: Timeouts) {
    let mut last = Verdict::Healthy;
    let mut tick = tokio::time::interval(JUDGE_EVERY);
    loop {
        tick.tick().await;
        let v = verdict::judge(&lock(&state).signals(Instant::now()), &timeouts);
        if v != last {
            last = v.clone();
            if tx.send(Observation::Verdict(v)).await.is_err() {
                return;
            }
        }
    }
}
