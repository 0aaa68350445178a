//! The vexfs controller library behind `vexctl`: boots guests, talks to the agent,
//! classifies crashes, records them and recovers.

pub mod build;
pub mod classify;
pub mod cli;
pub mod client;
pub mod guest;
pub mod plan;
pub mod recovery;
pub mod report;
pub mod results;
pub mod runner;
pub mod store;
pub mod supervisor;
#[cfg(test)]
mod test_agent;
pub mod transport;
pub mod trend;
pub mod verdict;
pub mod vm;
