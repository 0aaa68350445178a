//! Kernel taint mask decoding (kernel/panic.c `taint_flags`).

/// (bit, letter when set, name) in the kernel's order.
const FLAGS: &[(u32, char, &str)] = &[
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

/// The letters of the set bits, e.g. "DOE"; empty for an untainted kernel.
pub fn letters(mask: u64) -> String {
    FLAGS
        .iter()
        .filter(|(bit, _, _)| mask & (1 << bit) != 0)
        .map(|(_, c, _)| *c)
        .collect()
}

/// The names of the set bits, e.g. ["DIE", "OOT_MODULE"]; unknown bits as "BIT<n>".
pub fn names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            FLAGS
                .iter()
                .find(|(b, _, _)| *b == bit)
                .map_or_else(|| format!("BIT{bit}"), |(_, _, n)| (*n).to_string())
        })
        .collect()
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
    }
}
