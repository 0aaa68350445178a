//! Typed wrapper over the generated agent client: connect with retry and deadline,
//! per-call timeouts, and one method per RPC.

use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vexfs_proto::agent_client::AgentClient as RawClient;
use vexfs_proto::{
    Counters, Event, ExecReply, ExecRequest, HealthReply, HealthRequest, HungTask,
    KillProcessReply, KillProcessRequest, ListModulesReply, ListModulesRequest, LoadModuleRequest,
    ModuleReply, ReloadModuleRequest, SampleRequest, StreamRequest, SysrqRequest,
    UnloadModuleRequest,
};

use crate::transport::{self, Address, TransportError};

/// Default timeout of one unary call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single connect+Health attempt of [`AgentClient::connect_healthy`]: a
/// stuck attempt (backend accepted but never answers) must not eat the deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Agent client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not reach the agent.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The agent (or the transport under tonic) answered with an error status.
    #[error("{rpc}: {status}")]
    Rpc {
        /// Which call.
        rpc: &'static str,
        /// The status.
        status: Box<tonic::Status>,
    },
    /// The call did not finish in time.
    #[error("{rpc}: no answer within {timeout:?}")]
    Timeout {
        /// Which call.
        rpc: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The agent did not become healthy before the deadline.
    #[error("agent at {addr} not healthy within {waited:?}: {last}")]
    NotHealthy {
        /// The address.
        addr: String,
        /// How long we waited.
        waited: Duration,
        /// The last error seen.
        last: String,
    },
}

/// A connected agent client.
#[derive(Debug, Clone)]
pub struct AgentClient {
    raw: RawClient<Channel>,
    addr: Address,
    call_timeout: Duration,
}

/// A server stream of agent events.
pub type EventStream = tonic::Streaming<Event>;

impl AgentClient {
    /// Connects once (no retry) to `addr`.
    pub async fn connect(addr: &Address) -> Result<Self, ClientError> {
        let channel = transport::channel(addr).await?;
        Ok(Self {
            raw: RawClient::new(channel),
            addr: addr.clone(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Connects and waits until Health answers, retrying with backoff (the guest may
    /// still be booting) until `timeout`. Returns the client and the first reply.
    pub async fn connect_healthy(
        addr: &Address,
        timeout: Duration,
    ) -> Result<(Self, HealthReply), ClientError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut last;
        loop {
            let left = timeout.saturating_sub(start.elapsed()).min(ATTEMPT_TIMEOUT);
            let attempt = async {
                let mut client = Self::connect(addr).await?;
                client.call_timeout = left.max(Duration::from_millis(100));
                let reply = client.health().await?;
                client.call_timeout = DEFAULT_CALL_TIMEOUT;
                Ok::<_, ClientError>((client, reply))
            };
            match tokio::time::timeout(left.max(Duration::from_millis(1)), attempt).await {
                Ok(Ok(ok)) => return Ok(ok),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "attempt timed out".to_string(),
            }
            if start.elapsed() + delay >= timeout {
                return Err(ClientError::NotHealthy {
                    addr: addr.to_string(),
                    waited: start.elapsed(),
                    last,
                });
            }
            tracing::trace!(%addr, error = %last, "agent not healthy yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    /// The address this client talks to.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// Sets the timeout of unary calls (Exec adds its own command timeout on top).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    async fn unary<T, F>(
        &self,
        rpc: &'static str,
        timeout: Duration,
        fut: F,
    ) -> Result<T, ClientError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(ClientError::Rpc {
                rpc,
                status: Box::new(status),
            }),
            Err(_) => Err(ClientError::Timeout { rpc, timeout }),
        }
    }

    /// Health: versions, boot id, uptime, taint.
    pub async fn health(&mut self) -> Result<HealthReply, ClientError> {
        let mut raw = self.raw.clone();
        self.unary("Health", self.call_timeout, raw.health(HealthRequest {}))
            .await
    }

    /// Opens the event stream (kmsg records from `req.from_seq`, counters, heartbeats).
    pub async fn stream_events(&mut self, req: StreamRequest) -> Result<EventStream, ClientError> {
        let mut raw = self.raw.clone();
        self.unary("StreamEvents", self.call_timeout, raw.stream_events(req))
            .await
    }

    /// One counter sample.
    pub async fn sample_counters(&mut self, req: SampleRequest) -> Result<Counters, ClientError> {
        let mut raw = self.raw.clone();
        self.unary(
            "SampleCounters",
            self.call_timeout,
            raw.sample_counters(req),
        )
        .await
    }

    /// /proc/modules.
    pub async fn list_modules(&mut self) -> Result<ListModulesReply, ClientError> {
        let mut raw = self.raw.clone();
        self.unary(
            "ListModules",
            self.call_timeout,
            raw.list_modules(ListModulesRequest {}),
        )
        .await
    }

    /// Loads a module.
    pub async fn load_module(
        &mut self,
        req: LoadModuleRequest,
    ) -> Result<ModuleReply, ClientError> {
        let mut raw = self.raw.clone();
        self.unary("LoadModule", self.call_timeout, raw.load_module(req))
            .await
    }

    /// Unloads a module (the agent bounds it by `deadline_ms`).
    pub async fn unload_module(
        &mut self,
        req: UnloadModuleRequest,
    ) -> Result<ModuleReply, ClientError> {
        let timeout =
            self.call_timeout + Duration::from_millis(u64::from(req.deadline_ms).max(10_000));
        let mut raw = self.raw.clone();
        self.unary("UnloadModule", timeout, raw.unload_module(req))
            .await
    }

    /// Unload, verify, load, verify.
    pub async fn reload_module(
        &mut self,
        req: ReloadModuleRequest,
    ) -> Result<ModuleReply, ClientError> {
        let timeout =
            self.call_timeout + Duration::from_millis(u64::from(req.deadline_ms).max(10_000));
        let mut raw = self.raw.clone();
        self.unary("ReloadModule", timeout, raw.reload_module(req))
            .await
    }

    /// Runs a command in the guest; the call waits for the command's own timeout.
    pub async fn exec(&mut self, req: ExecRequest) -> Result<ExecReply, ClientError> {
        let cmd_timeout = if req.timeout_ms == 0 {
            60_000
        } else {
            req.timeout_ms
        };
        let timeout = self.call_timeout + Duration::from_millis(cmd_timeout);
        let mut raw = self.raw.clone();
        self.unary("Exec", timeout, raw.exec(req)).await
    }

    /// Writes one key to /proc/sysrq-trigger. Key `c` crashes the guest, so the reply
    /// may never come: callers expect a timeout or a transport error then.
    pub async fn sysrq(&mut self, key: &str) -> Result<(), ClientError> {
        let mut raw = self.raw.clone();
        self.unary(
            "Sysrq",
            self.call_timeout,
            raw.sysrq(SysrqRequest {
                key: key.to_string(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// Signals a guest process (or its group) and waits until it is gone; the agent
    /// bounds the wait by `req.wait_ms` (0: 1 s) and answers with where a survivor
    /// sleeps.
    pub async fn kill_process(
        &mut self,
        req: KillProcessRequest,
    ) -> Result<KillProcessReply, ClientError> {
        let wait = Duration::from_millis(u64::from(req.wait_ms).clamp(1000, 60_000));
        let timeout = self.call_timeout + wait;
        let mut raw = self.raw.clone();
        self.unary("KillProcess", timeout, raw.kill_process(req))
            .await
    }

    /// SIGKILLs `pid` and waits up to `wait` for it to be gone.
    pub async fn kill_and_wait(
        &mut self,
        pid: u32,
        wait: Duration,
    ) -> Result<KillProcessReply, ClientError> {
        self.kill_process(KillProcessRequest {
            pid,
            signal: 0,
            process_group: false,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        })
        .await
    }

    /// A counter sample for a leak check: slab caches and meminfo Slab/SUnreclaim,
    /// system file handles, the fds of the processes named in `fd_watch`, and the
    /// /proc/modules line (refcount) of `module` in `Counters.modules`.
    pub async fn leak_snapshot(
        &mut self,
        module: &str,
        fd_watch: &[String],
    ) -> Result<Counters, ClientError> {
        self.sample_counters(SampleRequest {
            fd_watch: fd_watch.to_vec(),
            modules: vec![module.to_string()],
        })
        .await
    }
}

/// One line on an Exec command that outlived its SIGKILL: who, and where in the kernel
/// it sleeps (the innermost frames of its stack, named as in crash titles).
pub fn unkillable_summary(h: &HungTask) -> String {
    let frames: Vec<String> = h
        .stack
        .iter()
        .filter_map(|f| crate::classify::frame_function(f))
        .take(6)
        .collect();
    let place = if frames.is_empty() {
        format!("wchan {}", if h.wchan.is_empty() { "?" } else { &h.wchan })
    } else {
        frames.join(" < ")
    };
    format!(
        "pid {} ({}) did not die when killed: it sleeps in the kernel at {place}",
        h.pid, h.comm
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_agent::{FakeAgent, serve};
    use std::sync::atomic::Ordering;
    use vexfs_proto::event;

    #[test]
    fn unkillable_summary_names_the_innermost_frames() {
        let mut h = HungTask {
            pid: 321,
            comm: "sh".into(),
            stack: vec![
                "[<0>] __mutex_lock.constprop.0+0x1a/0x40".into(),
                "[<0>] vexfs_fault_deadlock+0x3/0x4 [vexfs]".into(),
                "[<0>] vexfs_trigger_write+0x5/0x6 [vexfs]".into(),
            ],
            wchan: "__mutex_lock.constprop.0".into(),
            ..Default::default()
        };
        assert_eq!(
            unkillable_summary(&h),
            "pid 321 (sh) did not die when killed: it sleeps in the kernel at \
             __mutex_lock < vexfs_fault_deadlock < vexfs_trigger_write"
        );
        // No stack (not root, or no CONFIG_STACKTRACE): the wchan still says where.
        h.stack.clear();
        assert!(unkillable_summary(&h).ends_with("at wchan __mutex_lock.constprop.0"));
        h.wchan.clear();
        assert!(unkillable_summary(&h).ends_with("at wchan ?"));
    }

    #[tokio::test]
    async fn connect_healthy_waits_for_a_late_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let agent = FakeAgent::default();
        let calls = agent.health_calls.clone();
        let late = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            serve(&late, agent);
        });
        let start = Instant::now();
        let (mut client, reply) =
            AgentClient::connect_healthy(&Address::Unix(path), Duration::from_secs(5))
                .await
                .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(reply.agent_version, "fake");
        assert_eq!(client.health().await.unwrap().boot_id, "b1");
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        let mut stream = client
            .stream_events(StreamRequest::default())
            .await
            .unwrap();
        let mut beats = Vec::new();
        while let Some(ev) = stream.message().await.unwrap() {
            if let Some(event::Kind::Heartbeat(h)) = ev.kind {
                beats.push(h.beat);
            }
        }
        assert_eq!(beats, [1, 2]);
    }

    #[tokio::test]
    async fn kill_and_leak_snapshot_reach_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let agent = FakeAgent::default();
        agent.script_kill(KillProcessReply {
            gone: false,
            existed: true,
            state: "D".into(),
            stuck: Some(HungTask {
                pid: 77,
                wchan: "__mutex_lock".into(),
                ..Default::default()
            }),
            waited_ms: 1000,
        });
        agent.script_sample(Counters {
            modules: vec![vexfs_proto::Module {
                name: "vexfs".into(),
                refcount: 3,
                ..Default::default()
            }],
            ..Default::default()
        });
        let seen = agent.requests.clone();
        serve(&path, agent);
        let (mut client, _) =
            AgentClient::connect_healthy(&Address::Unix(path), Duration::from_secs(5))
                .await
                .unwrap();
        let r = client
            .kill_and_wait(77, Duration::from_millis(1500))
            .await
            .unwrap();
        assert!(!r.gone);
        assert_eq!(r.stuck.unwrap().wchan, "__mutex_lock");
        let c = client
            .leak_snapshot("vexfs", &["mount".into()])
            .await
            .unwrap();
        assert_eq!(c.modules[0].refcount, 3);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "KillProcess pid=77 signal=0 group=false wait_ms=1500",
                "SampleCounters fd_watch=[\"mount\"] modules=[\"vexfs\"]"
            ]
        );
        // Nothing scripted: the fake says so.
        let err = client.kill_and_wait(78, Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rpc { rpc: "KillProcess", status } if status.code() == tonic::Code::Unimplemented),
            "{err}"
        );
    }

    #[tokio::test]
    async fn no_agent_is_a_typed_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Unix(dir.path().join("none.sock"));
        let start = Instant::now();
        let err = AgentClient::connect_healthy(&addr, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::NotHealthy { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn rpc_errors_and_timeouts_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        serve(&path, FakeAgent::default());
        let (client, _) =
            AgentClient::connect_healthy(&Address::Unix(path), Duration::from_secs(5))
                .await
                .unwrap();
        let mut client = client.with_call_timeout(Duration::from_millis(200));
        let err = client.list_modules().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rpc { rpc: "ListModules", status } if status.code() == tonic::Code::Unavailable),
            "{err}"
        );
        let err = client.sysrq("w").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout { rpc: "Sysrq", .. }),
            "{err}"
        );
        // The channel is still usable after a timed-out call.
        client.health().await.unwrap();
    }
}
