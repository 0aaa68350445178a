//! The vexfs controller library behind `vexctl`: boots guests, talks to the agent,
//! classifies crashes, records them and recovers.

pub mod artifacts;
pub mod build;
pub mod classify;
pub mod cli;
pub mod client;
pub mod forensics;
pub mod guest;
pub mod incident;
pub mod metrics;
pub mod plan;
pub mod recovery;
pub mod report;
pub mod results;
pub mod runner;
pub mod scorecard;
pub mod store;
pub mod supervisor;
pub mod symbolize;
#[cfg(test)]
mod test_agent;
pub mod transport;
pub mod trend;
pub mod verdict;
pub mod vm;
