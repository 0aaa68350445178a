//! The kernel's taint mask (/proc/sys/kernel/tainted), bit meanings as in
//! kernel/panic.c `taint_flags`, shared by the agent (which reports it) and the
//! controller (which decides from it, e.g. "the kernel oopsed" from bit 7, D).
#![warn(missing_docs)]

/// (bit, letter when set, name) in the kernel's order.
pub const FLAGS: &[(u32, char, &str)] = &[
    (0, 'P', "PROPRIETARY_MODULE"),
    (1, 'F', "FORCED_MODULE"),
    (2, 'S', "CPU_OUT_OF_SPEC"),
    (3, 'R', "FORCED_RMMOD"),
    (4, 'M', "MACHINE_CHECK"),
    (5, 'B', "BAD_PAGE"),
    (6, 'U', "USER"),
    (7, 'D', "DIE"),
    (8, 'A', "OVERRIDDEN_ACPI_TABLE"),
    (9, 'W', "WARN"),
    (10, 'C', "CRAP"),
    (11, 'I', "FIRMWARE_WORKAROUND"),
    (12, 'O', "OOT_MODULE"),
    (13, 'E', "UNSIGNED_MODULE"),
    (14, 'L', "SOFTLOCKUP"),
    (15, 'K', "LIVEPATCH"),
    (16, 'X', "AUX"),
    (17, 'T', "RANDSTRUCT"),
    (18, 'N', "TEST"),
];

/// A taint mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Taint(pub u64);

impl Taint {
    /// Bit 7, 'D': the kernel died (an oops or BUG); the hung-task detector is silent
    /// afterwards and the module must not be unloaded.
    pub const DIE: u32 = 7;
    /// Bit 9, 'W': a WARN fired.
    pub const WARN: u32 = 9;
    /// Bit 12, 'O': an out-of-tree module is loaded.
    pub const OOT_MODULE: u32 = 12;
    /// Bit 13, 'E': an unsigned module is loaded.
    pub const UNSIGNED_MODULE: u32 = 13;
    /// Bit 14, 'L': a soft lockup was seen.
    pub const SOFTLOCKUP: u32 = 14;
    /// Bit 5, 'B': bad page (memory corruption seen by the page allocator).
    pub const BAD_PAGE: u32 = 5;
    /// Bit 4, 'M': a machine check.
    pub const MACHINE_CHECK: u32 = 4;

    /// Whether bit `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        bit < 64 && self.0 & (1u64 << bit) != 0
    }

    /// The kernel oopsed or hit BUG() (taint D).
    pub fn die(self) -> bool {
        self.has(Self::DIE)
    }

    /// A WARN fired (taint W).
    pub fn warn(self) -> bool {
        self.has(Self::WARN)
    }

    /// A soft lockup was reported (taint L).
    pub fn soft_lockup(self) -> bool {
        self.has(Self::SOFTLOCKUP)
    }

    /// Bad page state (taint B).
    pub fn bad_page(self) -> bool {
        self.has(Self::BAD_PAGE)
    }

    /// The kernel is in a state a clean boot does not have: D, W, L, B or M. O and E
    /// (the module under test loaded unsigned, out of tree) are expected.
    pub fn dirty(self) -> bool {
        [
            Self::DIE,
            Self::WARN,
            Self::SOFTLOCKUP,
            Self::BAD_PAGE,
            Self::MACHINE_CHECK,
        ]
        .into_iter()
        .any(|b| self.has(b))
    }

    /// The letters of the set bits in the kernel's order, e.g. "DOE"; empty for an
    /// untainted kernel.
    pub fn letters(self) -> String {
        FLAGS
            .iter()
            .filter(|(bit, _, _)| self.has(*bit))
            .map(|(_, c, _)| *c)
            .collect()
    }

    /// The names of the set bits, e.g. ["DIE", "OOT_MODULE"]; unknown bits as "BIT<n>".
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|bit| self.has(*bit))
            .map(|bit| {
                FLAGS
                    .iter()
                    .find(|(b, _, _)| *b == bit)
                    .map_or_else(|| format!("BIT{bit}"), |(_, _, n)| (*n).to_string())
            })
            .collect()
    }

    /// The mask with the bits of these letters (as in HealthReply.taint_flags); None
    /// when a letter is not a taint flag.
    pub fn from_letters(letters: &str) -> Option<Taint> {
        letters.chars().try_fold(Taint(0), |t, c| {
            let (bit, _, _) = FLAGS.iter().find(|(_, l, _)| *l == c)?;
            Some(Taint(t.0 | (1u64 << bit)))
        })
    }
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:#x})", self.letters(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_oops_after_oot_module() {
        let t = Taint((1 << 7) | (1 << 12) | (1 << 13));
        assert_eq!(t.letters(), "DOE");
        assert_eq!(t.names(), ["DIE", "OOT_MODULE", "UNSIGNED_MODULE"]);
        assert!(t.die() && !t.warn() && t.dirty());
        assert_eq!(Taint::from_letters("DOE"), Some(t));
        assert_eq!(Taint(0).letters(), "");
        assert_eq!(Taint(1 << 40).names(), ["BIT40"]);
        assert!(!Taint(1 << 40).die());
    }

    #[test]
    fn module_taint_alone_is_clean() {
        let t = Taint::from_letters("OE").unwrap();
        assert!(!t.dirty() && !t.die());
        assert!(Taint::from_letters("W").unwrap().dirty());
        assert!(Taint::from_letters("L").unwrap().soft_lockup());
        assert!(Taint::from_letters("B").unwrap().bad_page());
        assert_eq!(Taint::from_letters("Dz"), None);
        assert_eq!(Taint(1 << 7).to_string(), "D (0x80)");
    }
}
