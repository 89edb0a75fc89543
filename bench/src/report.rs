//! The result file: the conditions of the run, one section per benchmark with its
//! tables and plots, and a summary table of the figures that have targets.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

/// Whether a figure meets its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Met,
    Missed,
    /// A figure for orientation, with no target.
    Info,
}

impl Mark {
    pub fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "**missed**",
            Self::Info => "",
        }
    }
}

/// One line of the summary table.
#[derive(Clone, Debug)]
pub struct SummaryRow {
    pub metric: String,
    pub value: String,
    pub target: String,
    pub mark: Mark,
}

impl SummaryRow {
    pub fn new(
        metric: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        mark: Mark,
    ) -> Self {
        Self { metric: metric.into(), value: value.into(), target: target.into(), mark }
    }
}

/// What one benchmark produced: Markdown (tables, notes, links to its PNGs, which it
/// wrote next to the result file) and its summary lines.
#[derive(Debug, Default)]
pub struct Section {
    pub title: String,
    pub body: String,
    pub summary: Vec<SummaryRow>,
}

/// A Markdown table.
pub struct Table {
    text: String,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let mut text = format!("| {} |\n|", header.join(" | "));
        for (i, _) in header.iter().enumerate() {
            text.push_str(if i == 0 { " --- |" } else { " ---: |" });
        }
        text.push('\n');
        Self { text }
    }

    pub fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
    }

    pub fn render(self) -> String {
        self.text
    }
}

/// The summary table, for the terminal and the file.
pub fn summary_table(sections: &[Section]) -> String {
    let mut table = Table::new(&["figure", "measured", "target", ""]);
    for row in sections.iter().flat_map(|s| &s.summary) {
        table.row(&[
            row.metric.clone(),
            row.value.clone(),
            row.target.clone(),
            row.mark.text().to_string(),
        ]);
    }
    table.render()
}

/// Writes the result file `path`: title, conditions, summary, then every section.
pub fn write(path: &Path, title: &str, conditions: &str, sections: &[Section]) -> Result<()> {
    let mut text = format!("# {title}\n\n## Conditions\n\n{conditions}\n\n## Summary\n\n");
    text.push_str(&summary_table(sections));
    for section in sections {
        let _ = write!(text, "\n## {}\n\n{}\n", section.title, section.body.trim_end());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_markdown() {
        let mut table = Table::new(&["variant", "ns"]);
        table.row(&["floor".into(), "22.0".into()]);
        assert_eq!(table.render(), "| variant | ns |\n| --- | ---: |\n| floor | 22.0 |\n");
        let sections = [Section {
            title: "t".into(),
            body: String::new(),
            summary: vec![SummaryRow::new("port-only", "+3.1 ns", "≤ +4 ns", Mark::of(true))],
        }];
        assert!(summary_table(&sections).contains("| port-only | +3.1 ns | ≤ +4 ns | met |"));
    }
}
