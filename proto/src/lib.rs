//! Generated types and service stubs for the vexfs agent API (`proto/agent.proto`).
#![allow(missing_docs, clippy::all)]

/// Version 1 of the agent API.
pub mod v1 {
    tonic::include_proto!("vexfs.agent.v1");
}

pub use v1::*;
