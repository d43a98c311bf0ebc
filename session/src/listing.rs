//! `%tests`: the instrumenter's findings as a table.

use instrumenter::{FileReport, TestKind};
use kernel::session::{escape, MagicOutput};

/// A text and HTML table of tests with their step counts.
pub fn tests_table(files: &[FileReport]) -> MagicOutput {
    let mut text = String::new();
    let mut html = String::from(
        "<table class=\"stepkernel-tests\"><thead><tr><th>test</th><th>kind</th><th>steps</th></tr></thead><tbody>",
    );
    let mut count = 0;
    for file in files {
        if let Some(err) = &file.error {
            text.push_str(&format!("{}: {}\n", file.path, err.message));
            continue;
        }
        for test in &file.tests {
            count += 1;
            let steps: usize = test.phases.iter().map(|p| p.steps.len()).sum();
            let kind = match test.kind {
                TestKind::Unittest => "unittest",
                TestKind::Pytest => "pytest",
            };
            let note = match &test.error {
                Some(e) => format!("error: {}", e.message),
                None => format!("{steps} steps"),
            };
            text.push_str(&format!("{:<70} {:<9} {note}\n", test.id, kind));
            html.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&test.id),
                kind,
                escape(&note)
            ));
        }
    }
    html.push_str("</tbody></table>");
    text.push_str(&format!("{count} tests"));
    MagicOutput {
        text,
        html: Some(html),
    }
}
