//! How the generated types' fields that are not plain data serialize (feature
//! `serde`): bytes as text, proto enums (carried as `i32`) by their short name.

use serde::Serializer;

use crate::{Event, HungSource, ModuleOutcome, event};

/// An event serializes as its kind alone (`{"gap": {...}}`; `null` without one).
impl From<Event> for Option<event::Kind> {
    fn from(e: Event) -> Self {
        e.kind
    }
}

/// Command output and input as UTF-8 text, invalid sequences replaced (U+FFFD).
pub fn lossy_utf8<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(bytes))
}

/// `MODULE_OUTCOME_VERIFY_FAILED` as `verify-failed`; an unknown number as
/// `unspecified`.
pub fn module_outcome<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&module_outcome_name(*v))
}

/// The short name of a `ModuleOutcome` number (`ok`, `hung`, `verify-failed`, ...).
pub fn module_outcome_name(v: i32) -> String {
    let name = ModuleOutcome::try_from(v).unwrap_or_default().as_str_name();
    short(name, "MODULE_OUTCOME_")
}

/// `HUNG_SOURCE_DSTATE_SCAN` as `dstate-scan`; an unknown number as `unspecified`.
pub fn hung_source<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    let name = HungSource::try_from(*v).unwrap_or_default().as_str_name();
    s.serialize_str(&short(name, "HUNG_SOURCE_"))
}

/// A proto enum value name without its prefix, lower case, `-` between words.
pub fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "-")
}
