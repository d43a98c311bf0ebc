//! serde_json's pretty printing, started some levels deep: a value written
//! on its own that reads as if `to_vec_pretty` had written it in its place
//! inside a larger document (report.json's tests, serialized as they finish).

use serde_json::ser::Formatter;
use std::io;

/// `PrettyFormatter` with two-space indents, starting at `level`.
pub struct NestedPretty {
    level: usize,
    has_value: bool,
}

impl NestedPretty {
    /// Pretty printing for a value nested `level` arrays or objects deep.
    pub fn at_level(level: usize) -> Self {
        NestedPretty {
            level,
            has_value: false,
        }
    }

    /// A line break (after a comma) and the indent: one write for the usual
    /// depths, where writing each indent apart was a third of report.json's cost.
    fn newline<W: ?Sized + io::Write>(&self, writer: &mut W, comma: bool) -> io::Result<()> {
        const BREAK: &[u8] = b",\n                                                                ";
        let start = usize::from(!comma);
        let end = 2 + 2 * self.level;
        if end <= BREAK.len() {
            return writer.write_all(&BREAK[start..end]);
        }
        writer.write_all(&BREAK[start..2])?;
        for _ in 0..self.level {
            writer.write_all(b"  ")?;
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.level -= 1;
        if self.has_value {
            self.newline(writer, false)?;
        }
        writer.write_all(bracket)
    }
}

// The same calls as serde_json's PrettyFormatter (ser.rs), so the bytes match it.
impl Formatter for NestedPretty {
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.newline(writer, !first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.newline(writer, !first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// Appends `value` to `out` as `to_vec_pretty` writes it `level` levels deep.
pub fn write_at_level<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, level: usize, value: &T) {
    let mut ser = serde_json::Serializer::with_formatter(out, NestedPretty::at_level(level));
    value.serialize(&mut ser).expect("serializes");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_value_written_nested_reads_as_in_the_whole_document() {
        let inner = json!({"a": [1, {"b": []}, {}], "c": {"d": "x\ny"}, "e": []});
        let whole = serde_json::to_string_pretty(&json!({"k": [inner]})).unwrap();
        let mut out = Vec::new();
        super::write_at_level(&mut out, 2, &inner);
        let text = String::from_utf8(out).unwrap();
        assert!(
            whole.contains(&format!("\n    {text}\n")),
            "{text}\nnot in\n{whole}"
        );
        let mut top = Vec::new();
        super::write_at_level(&mut top, 0, &inner);
        assert_eq!(top, serde_json::to_vec_pretty(&inner).unwrap());
    }

    #[test]
    fn deeper_than_the_indent_buffer_reads_the_same() {
        let mut deep = json!({"leaf": [1, "two", {}]});
        for i in 0..40 {
            deep = if i % 2 == 0 {
                json!([deep, i])
            } else {
                json!({"k": deep, "n": i})
            };
        }
        let mut out = Vec::new();
        super::write_at_level(&mut out, 0, &deep);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string_pretty(&deep).unwrap()
        );
    }
}
