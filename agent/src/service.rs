//! The gRPC handlers: the one place where errors become `Status`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use vexfs_proto::agent_server::Agent;
use vexfs_proto::{
    Counters, Event, ExecReply, ExecRequest, HealthReply, HealthRequest, Heartbeat,
    KillProcessReply, KillProcessRequest, ListModulesReply, ListModulesRequest, LoadModuleRequest,
    ModuleReply, ReloadModuleRequest, SampleRequest, StreamRequest, SysrqReply, SysrqRequest,
    UnloadModuleRequest, event,
};

use crate::config::Config;
use crate::{counters, exec, hung, kill, kmsg, modules, restore, taint};

/// Events buffered per stream before the readers wait for the client.
const STREAM_BUFFER: usize = 1024;
/// How often a kmsg reader with nothing to read checks whether its client left.
const READER_POLL: Duration = Duration::from_millis(200);
/// Shortest period a client may ask for (heartbeats, counters).
const MIN_PERIOD: Duration = Duration::from_millis(10);
/// Longest period a client may ask for: a stream stays observably alive.
const MAX_PERIOD: Duration = Duration::from_secs(60);

/// Longest status message sent: it travels in an HTTP/2 header, and errors may quote
/// what the client sent (a megabyte name must not become a megabyte header).
const MAX_MESSAGE: usize = 1024;

/// A status with `msg` cut to MAX_MESSAGE bytes on a character boundary.
fn status(code: Code, msg: impl Into<String>) -> Status {
    let mut msg = msg.into();
    if msg.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        msg.truncate(end);
        msg.push_str("... (cut)");
    }
    Status::new(code, msg)
}

impl From<modules::Error> for Status {
    fn from(e: modules::Error) -> Self {
        use modules::Error as E;
        let code = match &e {
            E::NotAbsolute(_) | E::NotAllowed { .. } | E::NotRegular(_) | E::Invalid(_) => {
                Code::InvalidArgument
            }
            E::Open { source, .. } => io_code(source),
            E::ProcModules { .. } => Code::Unavailable,
        };
        status(code, e.to_string())
    }
}

/// The code for a file the caller named that could not be used.
fn io_code(source: &std::io::Error) -> Code {
    use std::io::ErrorKind as K;
    if source.raw_os_error() == Some(libc::ELOOP) {
        return Code::InvalidArgument;
    }
    match source.kind() {
        K::NotFound => Code::NotFound,
        K::PermissionDenied => Code::PermissionDenied,
        // The name itself is wrong: a file used as a directory, a symlink loop, too long.
        K::NotADirectory
        | K::IsADirectory
        | K::InvalidFilename
        | K::InvalidInput
        | K::ArgumentListTooLong => Code::InvalidArgument,
        _ => Code::FailedPrecondition,
    }
}

impl From<exec::Error> for Status {
    fn from(e: exec::Error) -> Self {
        let code = match &e {
            exec::Error::Invalid(_) => Code::InvalidArgument,
            exec::Error::Spawn { source, .. } => io_code(source),
            exec::Error::Wait { .. } => Code::FailedPrecondition,
        };
        status(code, e.to_string())
    }
}

impl From<counters::WatchError> for Status {
    fn from(e: counters::WatchError) -> Self {
        status(Code::InvalidArgument, e.to_string())
    }
}

impl From<kill::Error> for Status {
    fn from(e: kill::Error) -> Self {
        let code = match &e {
            kill::Error::Invalid(_) => Code::InvalidArgument,
            kill::Error::Signal { .. } => Code::PermissionDenied,
        };
        status(code, e.to_string())
    }
}

/// The agent service state, cheap to clone.
#[derive(Debug, Clone)]
pub struct Service {
    config: Arc<Config>,
    modules: modules::Control,
    /// Highest kmsg seq any stream has delivered.
    last_seq: Arc<AtomicU64>,
}

impl Service {
    /// A service over the given configuration.
    pub fn new(config: Config) -> Self {
        let modules = modules::Control::new(
            config.proc.clone(),
            config.module_dirs.clone(),
            config.unload_deadline,
        );
        Self {
            config: Arc::new(config),
            modules,
            last_seq: Arc::new(AtomicU64::new(0)),
        }
    }

    fn proc_file(&self, name: &str) -> Option<String> {
        std::fs::read(self.config.proc.join(name))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
    }

    fn boot_id(&self) -> String {
        self.proc_file("sys/kernel/random/boot_id")
            .unwrap_or_default()
    }

    fn uptime_ms(&self) -> u64 {
        use procfs::FromRead;
        std::fs::read(self.config.proc.join("uptime"))
            .ok()
            .and_then(|b| procfs::Uptime::from_read(&b[..]).ok())
            .map_or(0, |u| (u.uptime * 1000.0) as u64)
    }
}

/// Monotonic time since boot in microseconds (CLOCK_BOOTTIME, same clock as kmsg).
fn boottime_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1000)
        .unwrap_or(0)
}

/// The agent's own resident set size in bytes (always the real /proc/self).
fn own_rss() -> u64 {
    use procfs::FromRead;
    procfs::process::StatM::from_file("/proc/self/statm").map_or(0, |m| m.resident * 4096)
}

fn period(ms: u32, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(u64::from(ms)).clamp(MIN_PERIOD, MAX_PERIOD)
    }
}

fn kmsg_event(item: kmsg::Item) -> Vec<Event> {
    match item {
        kmsg::Item::Record(rec) => {
            let hung = hung::parse_kernel_notice(&rec.text).map(|mut h| {
                h.kmsg_seq = rec.seq;
                Event {
                    kind: Some(event::Kind::HungTask(h)),
                }
            });
            let mut v = vec![Event {
                kind: Some(event::Kind::Kmsg(rec)),
            }];
            v.extend(hung);
            v
        }
        kmsg::Item::Gap(g) => vec![Event {
            kind: Some(event::Kind::Gap(g)),
        }],
        kmsg::Item::Malformed(text) => {
            tracing::debug!("malformed kmsg line: {text}");
            Vec::new()
        }
    }
}

#[tonic::async_trait]
impl Agent for Service {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        let taint_mask = self
            .proc_file("sys/kernel/tainted")
            .and_then(|t| taint::parse(&t))
            .unwrap_or(0);
        Ok(Response::new(HealthReply {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: self.proc_file("sys/kernel/osrelease").unwrap_or_default(),
            boot_id: self.boot_id(),
            uptime_ms: self.uptime_ms(),
            taint_mask,
            taint_flags: taint::letters(taint_mask),
            taint_names: taint::names(taint_mask),
            agent_rss_bytes: own_rss(),
            agent_pid: std::process::id(),
            last_kmsg_seq: self.last_seq.load(Ordering::Relaxed),
            restore_generation: restore::generation(),
        }))
    }

    type StreamEventsStream = ReceiverStream<Result<Event, Status>>;

    async fn stream_events(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let req = request.into_inner();
        counters::check_watch(&req.fd_watch)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        // Seq of the last record this stream delivered, for its heartbeats.
        let stream_seq = Arc::new(AtomicU64::new(req.from_seq.saturating_sub(1)));

        let reader_tx = tx.clone();
        let kmsg_path: PathBuf = self.config.kmsg.clone();
        let global_seq = self.last_seq.clone();
        let seq = stream_seq.clone();
        let from = req.from_seq;
        std::thread::Builder::new()
            .name("kmsg".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let stop = || reader_tx.is_closed();
                let mut sink = |items: Vec<kmsg::Item>| {
                    for item in items {
                        let rec_seq = match &item {
                            kmsg::Item::Record(r) => Some(r.seq),
                            _ => None,
                        };
                        for ev in kmsg_event(item) {
                            if reader_tx.blocking_send(Ok(ev)).is_err() {
                                return false;
                            }
                        }
                        if let Some(s) = rec_seq {
                            seq.store(s, Ordering::Relaxed);
                            global_seq.fetch_max(s, Ordering::Relaxed);
                        }
                    }
                    true
                };
                if let Err(e) = kmsg::follow(&kmsg_path, from, READER_POLL, &stop, &mut sink) {
                    let msg = format!("kernel log {}: {e}", kmsg_path.display());
                    let _ = reader_tx.blocking_send(Err(Status::unavailable(msg)));
                }
            })
            .map_err(|e| Status::resource_exhausted(format!("cannot start reader: {e}")))?;

        let heartbeat = period(req.heartbeat_ms, self.config.heartbeat);
        let counters_every =
            (!req.disable_counters).then(|| period(req.counters_ms, self.config.counters));
        let svc = self.clone();
        let fd_watch = req.fd_watch;
        tokio::spawn(async move {
            svc.tick(tx, stream_seq, heartbeat, counters_every, fd_watch)
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn sample_counters(
        &self,
        request: Request<SampleRequest>,
    ) -> Result<Response<Counters>, Status> {
        let proc = self.config.proc.clone();
        let req = request.into_inner();
        let (watch, modules) = (req.fd_watch, req.modules);
        counters::check_watch(&watch)?;
        counters::check_modules(&modules)?;
        let c = tokio::task::spawn_blocking(move || {
            counters::sample(&proc, &watch, &modules, boottime_us())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(c))
    }

    async fn list_modules(
        &self,
        _: Request<ListModulesRequest>,
    ) -> Result<Response<ListModulesReply>, Status> {
        Ok(Response::new(ListModulesReply {
            modules: self.modules.list()?,
        }))
    }

    async fn load_module(
        &self,
        request: Request<LoadModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.modules.load(&r.path, &r.params).await?))
    }

    async fn unload_module(
        &self,
        request: Request<UnloadModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        let r = request.into_inner();
        let deadline = Duration::from_millis(u64::from(r.deadline_ms));
        Ok(Response::new(
            self.modules.unload(&r.name, deadline, r.force).await?,
        ))
    }

    async fn reload_module(
        &self,
        request: Request<ReloadModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        let r = request.into_inner();
        let deadline = Duration::from_millis(u64::from(r.deadline_ms));
        Ok(Response::new(
            self.modules
                .reload(&r.name, &r.path, &r.params, deadline)
                .await?,
        ))
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecReply>, Status> {
        Ok(Response::new(
            exec::run(request.into_inner(), &self.config.proc).await?,
        ))
    }

    async fn sysrq(&self, request: Request<SysrqRequest>) -> Result<Response<SysrqReply>, Status> {
        let key = request.into_inner().key;
        let valid = key.len() == 1 && key.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(status(
                Code::InvalidArgument,
                format!("sysrq key must be one letter or digit, got {key:?}"),
            ));
        }
        let path = self.config.proc.join("sysrq-trigger");
        let result = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(key.as_bytes()))
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        result.map_err(Status::unavailable)?;
        Ok(Response::new(SysrqReply {}))
    }

    async fn kill_process(
        &self,
        request: Request<KillProcessRequest>,
    ) -> Result<Response<KillProcessReply>, Status> {
        let reply = kill::kill(request.into_inner(), self.config.proc.clone()).await?;
        Ok(Response::new(reply))
    }
}

impl Service {
    /// Heartbeats, counter samples and the D-state scan for one stream, until the
    /// client goes away.
    async fn tick(
        self,
        tx: mpsc::Sender<Result<Event, Status>>,
        stream_seq: Arc<AtomicU64>,
        heartbeat: Duration,
        counters_every: Option<Duration>,
        fd_watch: Vec<String>,
    ) {
        use tokio::time::{MissedTickBehavior, interval};
        let mut beat_timer = interval(heartbeat);
        beat_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut counter_timer = interval(counters_every.unwrap_or(Duration::from_secs(3600)));
        counter_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let scan_every =
            (self.config.dstate_threshold / 2).clamp(MIN_PERIOD, Duration::from_secs(1));
        let mut scan_timer = interval(scan_every);
        scan_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut tracker = hung::DStateTracker::new(self.config.dstate_threshold);
        let boot_id = self.boot_id();
        let mut beat = 0u64;
        let proc = self.config.proc.clone();
        loop {
            let events: Vec<Event> = tokio::select! {
                _ = tx.closed() => return,
                _ = beat_timer.tick() => {
                    beat += 1;
                    vec![Event { kind: Some(event::Kind::Heartbeat(Heartbeat {
                        last_seq: stream_seq.load(Ordering::Relaxed),
                        boot_id: boot_id.clone(),
                        uptime_ms: self.uptime_ms(),
                        beat,
                    }))}]
                }
                _ = counter_timer.tick(), if counters_every.is_some() => {
                    let proc = proc.clone();
                    let watch = fd_watch.clone();
                    match tokio::task::spawn_blocking(move || {
                        counters::sample(&proc, &watch, &[], boottime_us())
                    }).await {
                        Ok(c) => vec![Event { kind: Some(event::Kind::Counters(c)) }],
                        Err(_) => Vec::new(),
                    }
                }
                _ = scan_timer.tick() => {
                    let proc = proc.clone();
                    let tasks = tokio::task::spawn_blocking(move || hung::scan(&proc))
                        .await
                        .unwrap_or_default();
                    tracker
                        .update(Instant::now(), &tasks)
                        .into_iter()
                        .map(|(t, blocked)| Event {
                            kind: Some(event::Kind::HungTask(hung::dstate_notice(
                                &self.config.proc, &t, blocked,
                            ))),
                        })
                        .collect()
                }
            };
            for ev in events {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        }
    }
}
