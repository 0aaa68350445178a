//! Results as JSON: the machine-readable report and the shard file format that
//! `vexctl report merge` reads back.

use crate::results::RunResults;

use super::Error;

/// Renders the run as pretty-printed JSON.
pub fn json(r: &RunResults) -> String {
    let mut s = serde_json::to_string_pretty(r).expect("RunResults serialises");
    s.push('\n');
    s
}

/// Parses a results file written by [`json`].
pub fn parse(text: &str) -> Result<RunResults, Error> {
    serde_json::from_str(text).map_err(Error::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn round_trips() {
        let r = sample();
        let s = json(&r);
        assert!(s.contains("\"status\": \"crashed\""));
        assert_eq!(parse(&s).unwrap(), r);
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = parse("{\"run_id\": 1}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid results JSON: missing field"),
            "{e}"
        );
    }
}
