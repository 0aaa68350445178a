//! `vexfs-agent`: thin main over the agent library.
fn main() {}
