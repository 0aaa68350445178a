//! Fuzzing of the parsers that read bytes from outside: the crash classifier, the
//! kmsg record decoder, the hybrid-vsock handshake reader, the QMP reader and the
//! plan parser. Each target runs structure-aware generated inputs (real kernel logs
//! cut, mixed and mutated; byte flips, truncations, random chunking, huge lines, NUL
//! bytes, invalid UTF-8) and checks properties that can fail, not only "no panic".
//!
//! A counting global allocator tracks this thread's live heap, and each target
//! asserts a stated bound on its peak, also for multi-MB inputs without a newline:
//! that is what shows the line caps hold.
//!
//! `VEXFS_FUZZ_CASES` (default 1,000,000) sets the cases per target, `VEXFS_FUZZ_SEED`
//! the seed (default fixed), `VEXFS_FUZZ_FROM` the first case index; a failure prints
//! the command that reruns just the failing case.
//!
//! Run: `cargo test -p vexfs-tests --test fuzz -- --nocapture` (prints per-target
//! cases, wall time and peak heap).

#[path = "fuzz/classify.rs"]
mod classify;
#[path = "fuzz/handshake.rs"]
mod handshake;
#[path = "fuzz/kmsg.rs"]
mod kmsg;
#[path = "fuzz/plan.rs"]
mod plan;
#[path = "fuzz/qmp.rs"]
mod qmp;
#[path = "fuzz/support.rs"]
mod support;
