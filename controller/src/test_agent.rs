//! An in-process fake agent for the controller's own tests: Health counts calls,
//! StreamEvents sends two heartbeats (or the events of a feed the test holds), Sysrq
//! hangs, KillProcess and SampleCounters answer what the test scripted (in order),
//! everything else is unimplemented.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use vexfs_proto::agent_server::{Agent, AgentServer};
use vexfs_proto::{
    Counters, Event, ExecReply, ExecRequest, HealthReply, HealthRequest, Heartbeat,
    KillProcessReply, KillProcessRequest, ListModulesReply, ListModulesRequest, LoadModuleRequest,
    ModuleReply, ReloadModuleRequest, SampleRequest, StreamRequest, SysrqReply, SysrqRequest,
    UnloadModuleRequest, event,
};

/// One item of the event stream.
pub type EventItem = Result<Event, Status>;

/// The fake agent; clones share their counters and feed.
#[derive(Default, Clone)]
pub struct FakeAgent {
    /// Health calls answered.
    pub health_calls: Arc<AtomicU32>,
    /// When set, the first StreamEvents streams what the test sends here.
    feed: Arc<Mutex<Option<mpsc::Receiver<EventItem>>>>,
    /// KillProcess replies still to give, first first.
    kills: Arc<Mutex<VecDeque<KillProcessReply>>>,
    /// SampleCounters replies still to give, first first.
    samples: Arc<Mutex<VecDeque<Counters>>>,
    /// The scripted calls received, one line each (`KillProcess pid=.. ...`).
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeAgent {
    /// A fake whose event stream is fed by the returned sender.
    pub fn with_feed() -> (FakeAgent, mpsc::Sender<EventItem>) {
        let (tx, rx) = mpsc::channel(1024);
        let agent = FakeAgent {
            feed: Arc::new(Mutex::new(Some(rx))),
            ..FakeAgent::default()
        };
        (agent, tx)
    }

    /// Queues the reply of the next KillProcess call.
    pub fn script_kill(&self, reply: KillProcessReply) {
        lock(&self.kills).push_back(reply);
    }

    /// Queues the reply of the next SampleCounters call.
    pub fn script_sample(&self, reply: Counters) {
        lock(&self.samples).push_back(reply);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
        self.health_calls.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(HealthReply {
            agent_version: "fake".into(),
            boot_id: "b1".into(),
            agent_pid: 1,
            ..Default::default()
        }))
    }
    type StreamEventsStream = Pin<Box<dyn tokio_stream::Stream<Item = EventItem> + Send>>;
    async fn stream_events(
        &self,
        _: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let fed = self.feed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = fed {
            return Ok(Response::new(Box::pin(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )));
        }
        let beats = (1..=2)
            .map(|beat| {
                Ok(Event {
                    kind: Some(event::Kind::Heartbeat(Heartbeat {
                        beat,
                        ..Default::default()
                    })),
                })
            })
            .collect::<Vec<_>>();
        Ok(Response::new(Box::pin(tokio_stream::iter(beats))))
    }
    async fn sample_counters(
        &self,
        request: Request<SampleRequest>,
    ) -> Result<Response<Counters>, Status> {
        let r = request.into_inner();
        lock(&self.requests).push(format!(
            "SampleCounters fd_watch={:?} modules={:?}",
            r.fd_watch, r.modules
        ));
        let next = lock(&self.samples).pop_front();
        next.map(Response::new)
            .ok_or_else(|| Status::unimplemented("fake: no sample scripted"))
    }
    async fn list_modules(
        &self,
        _: Request<ListModulesRequest>,
    ) -> Result<Response<ListModulesReply>, Status> {
        Err(Status::unavailable("cannot read /proc/modules"))
    }
    async fn load_module(
        &self,
        _: Request<LoadModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn unload_module(
        &self,
        _: Request<UnloadModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn reload_module(
        &self,
        _: Request<ReloadModuleRequest>,
    ) -> Result<Response<ModuleReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn exec(&self, _: Request<ExecRequest>) -> Result<Response<ExecReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn sysrq(&self, _: Request<SysrqRequest>) -> Result<Response<SysrqReply>, Status> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Response::new(SysrqReply {}))
    }
    async fn kill_process(
        &self,
        request: Request<KillProcessRequest>,
    ) -> Result<Response<KillProcessReply>, Status> {
        let r = request.into_inner();
        lock(&self.requests).push(format!(
            "KillProcess pid={} signal={} group={} wait_ms={}",
            r.pid, r.signal, r.process_group, r.wait_ms
        ));
        let next = lock(&self.kills).pop_front();
        next.map(Response::new)
            .ok_or_else(|| Status::unimplemented("fake: no kill scripted"))
    }
}

/// Serves `agent` on a unix socket at `path` (from a tokio runtime).
pub fn serve(path: &Path, agent: FakeAgent) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(agent))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    });
}
