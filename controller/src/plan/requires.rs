//! Kernel config options a test needs (`requires = ["CONFIG_KASAN"]`), and the check
//! against a kernel's recorded config: a kernel without one skips the test with the
//! reason, so a detector test never passes silently where its detector is missing.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One kernel config option, `CONFIG_` and upper-case letters, digits or `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigOption(String);

impl ConfigOption {
    /// Checks the name (`CONFIG_KASAN`; a bare `KASAN` is taken as `CONFIG_KASAN`).
    pub fn new(name: &str) -> Result<Self, String> {
        let full = if name.starts_with("CONFIG_") {
            name.to_string()
        } else {
            format!("CONFIG_{name}")
        };
        let rest = &full["CONFIG_".len()..];
        if rest.is_empty()
            || !rest
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(format!(
                "{name:?} is not a kernel config option (like CONFIG_KASAN)"
            ));
        }
        Ok(ConfigOption(full))
    }

    /// The option's name, `CONFIG_KASAN`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ConfigOption {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConfigOption {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConfigOption::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A kernel's `.config`: the options that are set, with their values (`y`, `m`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    set: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text (`CONFIG_X=y` lines; comments and `is not set` are unset).
    pub fn parse(text: &str) -> Self {
        let set = text
            .lines()
            .filter(|l| l.starts_with("CONFIG_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        KernelConfig { set }
    }

    /// Whether the option is on (`y`, `m` or a value other than `n`).
    pub fn has(&self, option: &ConfigOption) -> bool {
        self.set
            .get(option.as_str())
            .is_some_and(|v| v != "n" && !v.is_empty())
    }
}

/// Why a test cannot run on this kernel, or `None` when it can: each option in
/// `requires` must be on in `config`; a kernel whose config is unknown (`None`)
/// satisfies no requirement.
pub fn unmet(
    requires: &[ConfigOption],
    config: Option<&KernelConfig>,
    release: &str,
) -> Option<String> {
    if requires.is_empty() {
        return None;
    }
    let Some(config) = config else {
        let names: Vec<&str> = requires.iter().map(ConfigOption::as_str).collect();
        return Some(format!(
            "needs {}, but the image of {release} records no kernel config (rebuild it with guest-image/build-image.sh)",
            names.join(", ")
        ));
    };
    let missing: Vec<&str> = requires
        .iter()
        .filter(|o| !config.has(o))
        .map(ConfigOption::as_str)
        .collect();
    match missing.as_slice() {
        [] => None,
        [one] => Some(format!("needs {one}, which {release} lacks")),
        many => Some(format!("needs {}, which {release} lacks", many.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(names: &[&str]) -> Vec<ConfigOption> {
        names
            .iter()
            .map(|n| ConfigOption::new(n).unwrap())
            .collect()
    }

    #[test]
    fn option_names_are_checked() {
        assert_eq!(ConfigOption::new("KASAN").unwrap().as_str(), "CONFIG_KASAN");
        assert_eq!(
            ConfigOption::new("CONFIG_X86_64").unwrap().to_string(),
            "CONFIG_X86_64"
        );
        for bad in [
            "",
            "CONFIG_",
            "config_kasan",
            "CONFIG_KASAN=y",
            "CONFIG KASAN",
        ] {
            assert!(ConfigOption::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_parsing_knows_set_unset_and_modules() {
        let c = KernelConfig::parse(
            "# comment\nCONFIG_KASAN=y\nCONFIG_LOOP=m\n# CONFIG_KFENCE is not set\nCONFIG_LOCALVERSION=\"-x\"\nCONFIG_N=n\n",
        );
        assert!(c.has(&ConfigOption::new("CONFIG_KASAN").unwrap()));
        assert!(c.has(&ConfigOption::new("CONFIG_LOOP").unwrap()));
        assert!(c.has(&ConfigOption::new("CONFIG_LOCALVERSION").unwrap()));
        assert!(!c.has(&ConfigOption::new("CONFIG_KFENCE").unwrap()));
        assert!(!c.has(&ConfigOption::new("CONFIG_N").unwrap()));
        assert!(!c.has(&ConfigOption::new("CONFIG_ABSENT").unwrap()));
    }

    #[test]
    fn unmet_names_what_is_missing_and_the_kernel() {
        let c = KernelConfig::parse("CONFIG_KFENCE=y\nCONFIG_KASAN=y\n");
        let rel = "6.12.117+deb12-amd64";
        assert_eq!(unmet(&[], None, rel), None);
        assert_eq!(
            unmet(&opts(&["CONFIG_KASAN", "KFENCE"]), Some(&c), rel),
            None
        );
        assert_eq!(
            unmet(
                &opts(&["CONFIG_KASAN", "CONFIG_PROVE_LOCKING"]),
                Some(&c),
                rel
            )
            .unwrap(),
            "needs CONFIG_PROVE_LOCKING, which 6.12.117+deb12-amd64 lacks"
        );
        assert_eq!(
            unmet(
                &opts(&["CONFIG_A", "CONFIG_B"]),
                Some(&KernelConfig::default()),
                rel
            )
            .unwrap(),
            "needs CONFIG_A, CONFIG_B, which 6.12.117+deb12-amd64 lacks"
        );
        let why = unmet(&opts(&["CONFIG_KASAN"]), None, rel).unwrap();
        assert!(
            why.starts_with("needs CONFIG_KASAN, but the image of 6.12.117"),
            "{why}"
        );
    }

    #[test]
    fn plans_carry_requires_and_reject_bad_names() {
        let plan = |req: &str| {
            format!(
                "name = \"p\"\nkernels = [\"6.12\"]\n[[test]]\nname = \"t\"\nrequires = {req}\nsteps = [\"load\"]\n"
            )
        };
        let p =
            crate::plan::parse(&plan(r#"["CONFIG_KASAN", "PROVE_LOCKING"]"#), "p.toml").unwrap();
        assert_eq!(
            p.tests[0].requires,
            opts(&["CONFIG_KASAN", "CONFIG_PROVE_LOCKING"])
        );
        let e = crate::plan::parse(&plan(r#"["kasan"]"#), "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml") && e.contains("not a kernel config option"),
            "{e}"
        );
        let back = crate::plan::parse(&toml::to_string(&p).unwrap(), "back").unwrap();
        assert_eq!(back.tests[0].requires, p.tests[0].requires);
    }

    #[test]
    fn the_debug_plan_requires_a_detector_for_every_test() {
        let p =
            crate::plan::parse(include_str!("../../../plans/debug.toml"), "debug.toml").unwrap();
        let debian = KernelConfig::parse("CONFIG_KFENCE=y\n");
        for t in &p.tests {
            let why = unmet(&t.requires, Some(&debian), "6.12.117+deb12-amd64");
            assert!(
                why.is_some_and(|w| w.contains("lacks")),
                "{} would run",
                t.name
            );
        }
        let debug = KernelConfig::parse(
            "CONFIG_KASAN=y\nCONFIG_PROVE_LOCKING=y\nCONFIG_DEBUG_KMEMLEAK=y\n",
        );
        assert!(
            p.tests
                .iter()
                .all(|t| unmet(&t.requires, Some(&debug), "d").is_none())
        );
    }
}
