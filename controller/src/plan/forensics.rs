//! The `[forensics]` section: when recovery dumps guest memory (vmcores) and how many
//! dumps the crash database keeps.
//!
//! ```toml
//! [forensics]
//! keep_vmcores = 3          # newest dumps kept beside the database; 0 never dumps
//! vmcore_on = ["panic"]     # also "oops" (before the unload) and "hang" (before the reset)
//! vmcore_timeout_s = 60
//! vmcore_max_mib = 1024
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::Category;
use crate::vm::dump::DumpLimits;

/// Crashes a vmcore is taken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpOn {
    /// A kernel panic (the guest is paused by pvpanic): dumped before the relaunch.
    Panic,
    /// An oops in the module (module crash, memory corruption): dumped first, before
    /// the ladder unloads anything.
    Oops,
    /// A hang or deadlock: dumped after the sysrq forensics, before the reset.
    Hang,
}

impl DumpOn {
    /// Which setting covers a crash of `category`, if any.
    pub fn of(category: Category) -> Option<DumpOn> {
        match category {
            Category::KernelPanic => Some(DumpOn::Panic),
            Category::ModuleCrash | Category::MemoryCorruption => Some(DumpOn::Oops),
            Category::SystemHang | Category::Deadlock => Some(DumpOn::Hang),
            Category::ResourceLeak | Category::Warning | Category::Other => None,
        }
    }
}

/// Vmcore settings of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForensicsConfig {
    /// Newest vmcores kept in the artifacts folders (older ones are deleted); 0: none
    /// is taken.
    #[serde(default = "default_keep")]
    pub keep_vmcores: u32,
    /// Crashes that get a vmcore.
    #[serde(default = "default_on")]
    pub vmcore_on: Vec<DumpOn>,
    /// Longest one dump may take, s.
    #[serde(default = "default_timeout")]
    pub vmcore_timeout_s: u64,
    /// Largest dump kept, MiB.
    #[serde(default = "default_max_mib")]
    pub vmcore_max_mib: u64,
}

fn default_keep() -> u32 {
    3
}
fn default_on() -> Vec<DumpOn> {
    vec![DumpOn::Panic]
}
fn default_timeout() -> u64 {
    60
}
fn default_max_mib() -> u64 {
    1024
}

impl Default for ForensicsConfig {
    fn default() -> Self {
        Self {
            keep_vmcores: default_keep(),
            vmcore_on: default_on(),
            vmcore_timeout_s: default_timeout(),
            vmcore_max_mib: default_max_mib(),
        }
    }
}

impl ForensicsConfig {
    /// Whether a crash of `category` gets a vmcore.
    pub fn dumps(&self, category: Category) -> bool {
        self.keep_vmcores > 0 && DumpOn::of(category).is_some_and(|d| self.vmcore_on.contains(&d))
    }

    /// The bounds of one dump.
    pub fn limits(&self) -> DumpLimits {
        DumpLimits {
            time: Duration::from_secs(self.vmcore_timeout_s),
            max_bytes: self.vmcore_max_mib.saturating_mul(1 << 20),
        }
    }

    /// What is wrong with the settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.keep_vmcores > 0 && (self.vmcore_timeout_s == 0 || self.vmcore_max_mib == 0) {
            return Err("forensics: vmcore_timeout_s and vmcore_max_mib must be above zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_only_by_default_and_none_when_nothing_is_kept() {
        let d = ForensicsConfig::default();
        assert!(d.dumps(Category::KernelPanic));
        assert!(!d.dumps(Category::ModuleCrash));
        assert!(!d.dumps(Category::Deadlock));
        assert!(!d.dumps(Category::Warning));
        let all = ForensicsConfig {
            vmcore_on: vec![DumpOn::Panic, DumpOn::Oops, DumpOn::Hang],
            ..d.clone()
        };
        assert!(all.dumps(Category::MemoryCorruption));
        assert!(all.dumps(Category::SystemHang));
        assert!(!all.dumps(Category::ResourceLeak));
        let none = ForensicsConfig {
            keep_vmcores: 0,
            ..all
        };
        assert!(!none.dumps(Category::KernelPanic));
        assert_eq!(d.limits().max_bytes, 1 << 30);
    }

    #[test]
    fn parses_from_toml_and_rejects_unknown_keys_and_zero_bounds() {
        let c: ForensicsConfig =
            toml::from_str("keep_vmcores = 1\nvmcore_on = [\"hang\", \"oops\"]").unwrap();
        assert_eq!(c.vmcore_on, [DumpOn::Hang, DumpOn::Oops]);
        assert_eq!(c.vmcore_timeout_s, 60);
        assert!(toml::from_str::<ForensicsConfig>("keep = 1").is_err());
        assert!(toml::from_str::<ForensicsConfig>("vmcore_on = [\"warning\"]").is_err());
        let z: ForensicsConfig = toml::from_str("vmcore_max_mib = 0").unwrap();
        assert!(z.check().is_err());
    }
}
