//! The vexfs controller library behind `vexctl`: boots guests, talks to the agent,
//! classifies crashes, records them and recovers.

pub mod classify;
pub mod cli;
pub mod client;
pub mod transport;
pub mod vm;
pub mod store;
pub mod trend;
pub mod recovery;
pub mod verdict;
pub mod guest;
pub mod supervisor;
