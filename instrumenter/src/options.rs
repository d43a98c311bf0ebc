//! How the instrumenter recognises tests and step markers.

use crate::error::InstrumentError;
use regex::Regex;

/// The default step marker: `# step: NAME`.
pub const DEFAULT_STEP_MARKER: &str = r"^#\s*step:\s*(.*?)\s*$";
/// The default end-of-step marker: `# endstep`.
pub const DEFAULT_END_MARKER: &str = r"^#\s*endstep\b";
/// The default test plan id: letters, a dash, digits (`TP-101`, `REQ-7`).
pub const DEFAULT_PLAN_ID: &str = r"[A-Z][A-Z0-9_]*-[0-9]+";

/// Settings for [`crate::instrument_source`] and [`crate::instrument_path`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Matches a comment (including its `#`) that starts a named step; the
    /// first capture group is the step's name.
    pub step_marker: Regex,
    /// Matches a comment that ends the current step.
    pub end_marker: Regex,
    /// Prefix of test functions and methods (pytest's `python_functions`,
    /// unittest's `TestLoader.testMethodPrefix`).
    pub function_prefix: String,
    /// Prefix of pytest test classes (pytest's `python_classes`).
    pub class_prefix: String,
    /// What one test plan id looks like; a step name ending in `[ID, ID...]`
    /// where every item matches it (whole) names those plan items.
    pub plan_id: Regex,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            step_marker: marker(DEFAULT_STEP_MARKER),
            end_marker: marker(DEFAULT_END_MARKER),
            function_prefix: "test".to_string(),
            class_prefix: "Test".to_string(),
            plan_id: marker(DEFAULT_PLAN_ID),
        }
    }
}

impl Options {
    /// Default options with another step marker regex, checked to compile and
    /// to have a capture group for the name.
    pub fn with_step_marker(pattern: &str) -> Result<Options, InstrumentError> {
        let step_marker = Regex::new(pattern).map_err(|e| InstrumentError::BadMarker {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?;
        if step_marker.captures_len() < 2 {
            return Err(InstrumentError::BadMarker {
                pattern: pattern.to_string(),
                reason: "it needs one capture group for the step name".to_string(),
            });
        }
        Ok(Options {
            step_marker,
            ..Options::default()
        })
    }
}

impl Options {
    /// These options with another plan id regex (`--plan-id`), checked to
    /// compile and not to match an empty id.
    pub fn with_plan_id(mut self, pattern: &str) -> Result<Options, InstrumentError> {
        let bad = |reason: String| InstrumentError::BadPlanId {
            pattern: pattern.to_string(),
            reason,
        };
        let plan_id = Regex::new(pattern).map_err(|e| bad(e.to_string()))?;
        if plan_id.is_match("") {
            return Err(bad("it matches an empty id".to_string()));
        }
        self.plan_id = plan_id;
        Ok(self)
    }

    /// Splits a marker's name into the name and the plan ids of a trailing
    /// `[ID, ID...]`; brackets holding anything else stay in the name
    /// (`# step: check items[0]`).
    pub fn split_plan_ids(&self, raw: &str) -> (String, Vec<String>) {
        let raw = raw.trim();
        let whole = (raw.to_string(), Vec::new());
        let Some(inner) = raw.strip_suffix(']') else {
            return whole;
        };
        let Some(open) = inner.rfind('[') else {
            return whole;
        };
        let ids: Vec<String> = inner[open + 1..]
            .split(',')
            .map(|id| id.trim().to_string())
            .collect();
        let is_id = |id: &String| {
            self.plan_id
                .find(id)
                .is_some_and(|m| m.start() == 0 && m.end() == id.len())
        };
        if ids.is_empty() || !ids.iter().all(is_id) {
            return whole;
        }
        (inner[..open].trim_end().to_string(), ids)
    }

    /// Names everything that decides the steps found in a file: this crate's
    /// sources and the options. Equal fingerprints and equal file contents
    /// give equal reports, so step data cached under one stays valid.
    pub fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf29ce484222325;
        let parts = [
            self.step_marker.as_str(),
            self.end_marker.as_str(),
            &self.function_prefix,
            &self.class_prefix,
            self.plan_id.as_str(),
        ];
        for part in parts {
            for byte in part.bytes().chain([0u8]) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x100000001b3);
            }
        }
        format!("{}-{hash:016x}", env!("INSTRUMENTER_SOURCE_HASH"))
    }
}

/// Compiles one of the built-in patterns (constants, checked by a test).
fn marker(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in marker patterns compile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_names_the_options() {
        let default = Options::default().fingerprint();
        assert_eq!(default, Options::default().fingerprint());
        let other = Options::with_step_marker(r"^#\s*part:\s*(.*)$").unwrap();
        assert_ne!(default, other.fingerprint());
        assert!(default.starts_with(env!("INSTRUMENTER_SOURCE_HASH")));
    }

    #[test]
    fn default_markers_compile_and_match() {
        let o = Options::default();
        let caps = o
            .step_marker
            .captures("#  step:  log in  ")
            .expect("matches");
        assert_eq!(&caps[1], "log in");
        assert!(o.end_marker.is_match("# endstep"));
        assert!(!o.end_marker.is_match("# endsteps"));
        assert!(!o.step_marker.is_match("# steps: x"));
    }

    #[test]
    fn plan_ids_are_split_off_step_names() {
        let o = Options::default();
        assert_eq!(
            o.split_plan_ids("log in [TP-101, TP-102]"),
            (
                "log in".to_string(),
                vec!["TP-101".to_string(), "TP-102".to_string()]
            )
        );
        assert_eq!(
            o.split_plan_ids("[TP-7]"),
            (String::new(), vec!["TP-7".to_string()])
        );
        // Brackets that are not all plan ids belong to the name.
        for name in [
            "check items[0]",
            "mixed [TP-1, later]",
            "empty []",
            "log in",
        ] {
            assert_eq!(
                o.split_plan_ids(name),
                (name.to_string(), Vec::new()),
                "{name}"
            );
        }
        let custom = Options::default().with_plan_id(r"#\d+").unwrap();
        assert_eq!(
            custom.split_plan_ids("pay [#12]").1,
            vec!["#12".to_string()]
        );
        assert!(custom.split_plan_ids("pay [TP-1]").1.is_empty());
        assert_ne!(custom.fingerprint(), o.fingerprint());
        assert!(matches!(
            Options::default().with_plan_id(r"\d*"),
            Err(InstrumentError::BadPlanId { .. })
        ));
        assert!(matches!(
            Options::default().with_plan_id(r"(x"),
            Err(InstrumentError::BadPlanId { .. })
        ));
    }

    #[test]
    fn custom_marker_needs_a_group_and_must_compile() {
        assert!(Options::with_step_marker(r"^#\s*STEP (.+)$").is_ok());
        assert!(matches!(
            Options::with_step_marker(r"^# step"),
            Err(InstrumentError::BadMarker { .. })
        ));
        assert!(matches!(
            Options::with_step_marker(r"(unclosed"),
            Err(InstrumentError::BadMarker { .. })
        ));
    }
}
