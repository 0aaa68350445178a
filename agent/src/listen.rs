//! Incoming connections: vsock (filtered by peer CID) and unix sockets, each served by
//! its own tonic server over the same service.

use std::path::Path;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use vexfs_proto::agent_server::AgentServer;

use crate::config::Listen;
use crate::service::Service;

/// Errors while setting up or serving a listener.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("serving {addr}: {source}")]
    Serve {
        /// The address.
        addr: String,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Serves `svc` on one listen address until the server fails.
pub async fn serve(
    svc: Service,
    listen: Listen,
    allowed_cids: Option<Vec<u32>>,
) -> Result<(), Error> {
    let server = tonic::transport::Server::builder().add_service(AgentServer::new(svc));
    match listen {
        Listen::Unix(path) => {
            let addr = format!("unix:{}", path.display());
            let listener = bind_unix(&path).map_err(|source| Error::Bind {
                addr: addr.clone(),
                source,
            })?;
            tracing::info!("listening on {addr}");
            server
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .map_err(|source| Error::Serve { addr, source })
        }
        Listen::Vsock(port) => {
            let addr = format!("vsock:{port}");
            let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                tokio_vsock::VMADDR_CID_ANY,
                port,
            ))
            .map_err(|source| Error::Bind {
                addr: addr.clone(),
                source,
            })?;
            // The controller waits for this console line before its first connect.
            tracing::info!("{}:{port}", vexfs_proto::READY_MARKER);
            let (tx, rx) = mpsc::channel::<std::io::Result<tokio_vsock::VsockStream>>(16);
            tokio::spawn(async move {
                loop {
                    let accepted = listener.accept().await;
                    let conn = match accepted {
                        Ok((stream, peer)) => {
                            if !peer_allowed(allowed_cids.as_deref(), peer.cid()) {
                                // Dropping the stream closes it: a guest-local or other
                                // VM's process may not drive the agent.
                                tracing::warn!("refused vsock connection from CID {}", peer.cid());
                                continue;
                            }
                            Ok(stream)
                        }
                        Err(e) => {
                            tracing::warn!("vsock accept: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
            });
            server
                .serve_with_incoming(ReceiverStream::new(rx))
                .await
                .map_err(|source| Error::Serve { addr, source })
        }
    }
}

/// Whether a vsock peer may drive the agent: any CID when no list is configured.
pub fn peer_allowed(allowed_cids: Option<&[u32]>, cid: u32) -> bool {
    allowed_cids.is_none_or(|cids| cids.contains(&cid))
}

fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    // A socket file left by an earlier run would make bind fail with EADDRINUSE.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixListener::bind(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HOST_CID;

    #[test]
    fn only_listed_cids_may_connect() {
        let host_only = [HOST_CID];
        assert!(peer_allowed(Some(&host_only), HOST_CID));
        // The guest itself through vsock_loopback (VMADDR_CID_LOCAL), the hypervisor,
        // this guest's own CID and other guests are all refused.
        for cid in [0, 1, 3, 4, u32::MAX] {
            assert!(!peer_allowed(Some(&host_only), cid), "CID {cid}");
        }
        assert!(peer_allowed(Some(&[3, 7]), 7));
        assert!(!peer_allowed(Some(&[3, 7]), HOST_CID));
        assert!(
            !peer_allowed(Some(&[]), HOST_CID),
            "an empty list admits nobody"
        );
        // `--allow-cid any`.
        assert!(peer_allowed(None, 1));
        assert!(peer_allowed(None, HOST_CID));
    }
}
