//! Generated types and service stubs for the vexfs agent API (`proto/agent.proto`).
#![allow(missing_docs, clippy::all)]

/// Version 1 of the agent API.
pub mod v1 {
    tonic::include_proto!("vexfs.agent.v1");
}

pub use v1::*;

#[cfg(feature = "serde")]
pub mod json;
pub mod taint;

pub use taint::Taint;

/// The agent's readiness marker: it logs a line containing this (e.g.
/// `listening on vsock:5000`) to the console once its vsock listener is bound, and the
/// controller waits for it before the first connect.
pub const READY_MARKER: &str = "listening on vsock";

impl HealthReply {
    /// The taint mask, typed.
    pub fn taint(&self) -> Taint {
        Taint(self.taint_mask)
    }
}

impl Counters {
    /// The taint mask of the sample, typed.
    pub fn taint(&self) -> Taint {
        Taint(self.taint_mask)
    }
}
