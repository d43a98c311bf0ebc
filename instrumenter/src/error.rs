//! Errors of the instrumenter's API. Problems inside a file are not errors:
//! they are reported inside the [`crate::FileReport`].

use std::path::PathBuf;

/// Why a request could not be served at all.
#[derive(Debug, thiserror::Error)]
pub enum InstrumentError {
    /// The path to instrument does not exist.
    #[error("{}: no such file or directory", path.display())]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// The path exists but cannot be read or walked.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The step marker regex is unusable.
    #[error("bad step marker regex {pattern:?}: {reason}")]
    BadMarker {
        /// The pattern as given.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The plan id regex is unusable.
    #[error("bad plan id regex {pattern:?}: {reason}")]
    BadPlanId {
        /// The pattern as given.
        pattern: String,
        /// Why it was rejected.
        reason: String,
    },
    /// No test matches the requested name.
    #[error("no test matches {name:?}{}", suggestions(closest))]
    NoSuchTest {
        /// The name that was asked for.
        name: String,
        /// The test ids closest to it, best first.
        closest: Vec<String>,
    },
}

fn suggestions(closest: &[String]) -> String {
    if closest.is_empty() {
        return "; no tests were found".to_string();
    }
    let mut out = String::from("; the closest tests are:");
    for id in closest {
        out.push_str("\n  ");
        out.push_str(id);
    }
    out
}
