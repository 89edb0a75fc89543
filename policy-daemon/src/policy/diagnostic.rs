//! Messages that point at the policy source: `file:line:column: message`, then the line
//! with the offending text underlined.

use std::{fmt, ops::Range, path::PathBuf};

/// A position in a policy file, 1-based, columns counted in characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The location of byte offset `offset` of `text`.
    pub fn of(file: PathBuf, text: &str, offset: usize) -> Self {
        let offset = floor_char_boundary(text, offset);
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            file,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// Where the lines of a text start, to find the [`Location`] of many offsets without
/// scanning the text from the start for each ([`Location::of`] does that).
pub struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of every line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, starts }
    }

    /// The same as `Location::of(file, text, offset)`.
    pub fn location(&self, file: PathBuf, offset: usize) -> Location {
        let offset = floor_char_boundary(self.text, offset);
        // Lines starting at or before `offset`; a line starting exactly at `offset`
        // follows a newline before it.
        let line = self.starts.partition_point(|start| *start <= offset);
        let line_start = self.starts[line - 1];
        Location { file, line, column: self.text[line_start..offset].chars().count() + 1 }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
    /// The source line and a `^^^` underline, ready to print.
    pub snippet: String,
}

impl Diagnostic {
    /// A diagnostic for the bytes `span` of `text` (a file's whole contents).
    pub fn new(file: PathBuf, text: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let location = Location::of(file, text, span.start);
        let snippet = snippet(text, &location, span);
        Self { location, message: message.into(), snippet }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.location, self.message)?;
        f.write_str(&self.snippet)
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn snippet(text: &str, location: &Location, span: Range<usize>) -> String {
    let Some(line) = text.lines().nth(location.line - 1) else {
        return String::new();
    };
    let number = location.line.to_string();
    let gutter = " ".repeat(number.len());
    let line_chars = line.chars().count();
    let start = location.column - 1;
    let span_chars = text
        .get(floor_char_boundary(text, span.start)..floor_char_boundary(text, span.end))
        .map_or(1, |s| s.chars().take_while(|c| *c != '\n').count());
    let width = span_chars.clamp(1, line_chars.saturating_sub(start).max(1));
    format!(
        "{gutter} |\n{number} | {line}\n{gutter} | {}{}\n",
        " ".repeat(start),
        "^".repeat(width)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_index_finds_what_location_of_finds() {
        let text = "a = 1\n\nname = \"é→x\"\n  [[rule]]\r\nlast";
        let lines = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            let file = PathBuf::from("t.toml");
            assert_eq!(
                lines.location(file.clone(), offset),
                Location::of(file, text, offset),
                "offset {offset}"
            );
        }
    }
}
