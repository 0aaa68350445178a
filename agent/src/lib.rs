//! The vexfs guest agent: serves the agent API over vsock or a unix socket.
