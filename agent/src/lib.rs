//! The vexfs guest agent: streams the guest's kernel log, resource counters and hung
//! tasks, and loads, unloads and exercises the module under test, over gRPC on vsock
//! (or a unix socket for development and tests). It observes and obeys; the controller
//! decides what a crash is.

pub mod config;
pub mod counters;
pub mod disks;
pub mod exec;
pub mod hung;
pub mod init;
pub mod kill;
pub mod kmsg;
pub mod listen;
pub mod modules;
pub mod probe;
pub mod restore;
pub mod service;
pub mod taint;

use config::Config;

/// Serves every configured listener until one fails.
pub async fn run(config: Config) -> Result<(), listen::Error> {
    let svc = service::Service::new(config.clone());
    let mut servers = tokio::task::JoinSet::new();
    for l in config.listen.clone() {
        servers.spawn(listen::serve(svc.clone(), l, config.allowed_cids.clone()));
    }
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => tracing::error!("listener task: {e}"),
        }
    }
    Ok(())
}
