//! Picking tests by name (`PATH::NAME`), with suggestions when none match.

use crate::error::InstrumentError;
use crate::report::FileReport;

/// How many close ids an unknown name suggests.
const SUGGESTIONS: usize = 5;

/// Keeps the tests whose id is `path::NAME` or lies under it (`NAME` may be
/// a class, `Class::method` or a function; a `[param]` suffix is ignored).
/// Files without a match are dropped; no match at all is an error listing
/// the closest ids.
pub fn select(files: Vec<FileReport>, name: &str) -> Result<Vec<FileReport>, InstrumentError> {
    let wanted = strip_params(name.trim_matches(':'));
    let mut kept = Vec::new();
    let mut all_ids = Vec::new();
    for mut file in files {
        let prefix = format!("{}::", file.path);
        let matches = |id: &str| {
            let rel = id.strip_prefix(prefix.as_str()).unwrap_or(id);
            rel == wanted
                || rel
                    .strip_prefix(wanted)
                    .is_some_and(|rest| rest.starts_with("::"))
                || id == wanted
        };
        if !file.tests.iter().any(|t| matches(&t.id)) {
            all_ids.extend(file.tests.into_iter().map(|t| t.id));
            continue;
        }
        file.tests.retain(|t| matches(&t.id));
        kept.push(file);
    }
    if kept.is_empty() {
        return Err(InstrumentError::NoSuchTest {
            name: name.to_string(),
            closest: closest(wanted, &all_ids),
        });
    }
    Ok(kept)
}

fn strip_params(name: &str) -> &str {
    match name.find('[') {
        Some(at) if name.ends_with(']') => &name[..at],
        _ => name,
    }
}

/// The ids closest to `name`, comparing with the part after the file path.
pub fn closest(name: &str, ids: &[String]) -> Vec<String> {
    let mut scored: Vec<(usize, &String)> = ids
        .iter()
        .map(|id| {
            let rel = id.split_once("::").map_or(id.as_str(), |(_, rel)| rel);
            let last = rel.rsplit("::").next().unwrap_or(rel);
            let score = edit_distance(name, rel).min(edit_distance(name, last));
            (score, id)
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(SUGGESTIONS)
        .map(|(_, id)| id.clone())
        .collect()
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{TestKind, TestReport};

    fn file(path: &str, ids: &[&str]) -> FileReport {
        let mut f = FileReport::new(path);
        f.tests = ids
            .iter()
            .map(|rel| TestReport {
                id: format!("{path}::{rel}"),
                kind: TestKind::Pytest,
                name: rel.rsplit("::").next().unwrap().to_string(),
                class: None,
                line: 1,
                phases: Vec::new(),
                error: None,
            })
            .collect();
        f
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn selects_class_method_and_function() {
        let files = vec![file("t.py", &["TestA::test_x", "TestA::test_y", "test_f"])];
        let ids = |r: Vec<FileReport>| -> Vec<String> {
            r.into_iter().flat_map(|f| f.tests).map(|t| t.id).collect()
        };
        assert_eq!(
            ids(select(files.clone(), "TestA").unwrap()),
            ["t.py::TestA::test_x", "t.py::TestA::test_y"]
        );
        assert_eq!(
            ids(select(files.clone(), "TestA::test_y").unwrap()),
            ["t.py::TestA::test_y"]
        );
        assert_eq!(
            ids(select(files.clone(), "test_f[1-2]").unwrap()),
            ["t.py::test_f"]
        );
        // A prefix of a name is not a match.
        assert!(select(files, "TestA::test").is_err());
    }

    #[test]
    fn unknown_name_suggests_closest_ids() {
        let files = vec![file(
            "t.py",
            &["TestA::test_total", "test_other", "test_totally_else"],
        )];
        match select(files, "TestA::test_totl") {
            Err(InstrumentError::NoSuchTest { closest, .. }) => {
                assert_eq!(closest[0], "t.py::TestA::test_total");
                assert_eq!(closest.len(), 3);
            }
            other => panic!("expected NoSuchTest, got {other:?}"),
        }
    }
}
