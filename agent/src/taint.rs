//! Kernel taint mask decoding: the shared table in the proto crate
//! ([`vexfs_proto::Taint`]), so agent and controller read the bits the same way.

use vexfs_proto::Taint;

/// The letters of the set bits, e.g. "DOE"; empty for an untainted kernel.
pub fn letters(mask: u64) -> String {
    Taint(mask).letters()
}

/// The names of the set bits, e.g. ["DIE", "OOT_MODULE"]; unknown bits as "BIT<n>".
pub fn names(mask: u64) -> Vec<String> {
    Taint(mask).names()
}

/// Parses /proc/sys/kernel/tainted (procfs has no reader for it): a decimal mask.
pub fn parse(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_oops_after_oot_module() {
        let mask = (1 << 7) | (1 << 12) | (1 << 13);
        assert_eq!(letters(mask), "DOE");
        assert_eq!(names(mask), ["DIE", "OOT_MODULE", "UNSIGNED_MODULE"]);
        assert_eq!(letters(0), "");
        assert_eq!(names(1 << 40), ["BIT40"]);
        assert_eq!(parse("12416\n"), Some(12416));
        assert_eq!(parse("lots"), None);
    }
}
