//! The restore generation. A guest restored from a snapshot keeps the snapshot's boot
//! id, uptime and memory, so nothing of its own tells it from the guest that crashed.
//! After a restore the host writes a fresh number to [`GENERATION_FILE`] (through
//! Exec, in the new guest's RAM); Health reports it, so the host can prove that the
//! agent answering is the restored one.

use std::path::Path;

/// Where the host writes the restore generation (tmpfs/initramfs: gone on a cold boot).
pub const GENERATION_FILE: &str = "/run/vexfs/restore-generation";

/// The generation in [`GENERATION_FILE`]; 0 when it is absent (a cold boot).
pub fn generation() -> u64 {
    read_generation(Path::new(GENERATION_FILE))
}

/// The decimal number in `path`; 0 when the file is absent, empty or not a number.
pub fn read_generation(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_reads_a_number_or_zero() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("g");
        assert_eq!(read_generation(&f), 0, "absent");
        std::fs::write(&f, "1764625000123456789\n").unwrap();
        assert_eq!(read_generation(&f), 1_764_625_000_123_456_789);
        std::fs::write(&f, "junk").unwrap();
        assert_eq!(read_generation(&f), 0);
    }
}
