//! The report of a benchmark: a table of "measure | yukicomm | floor or peer | ratio
//! ..." rows under a line of settings and above notes, as aligned text or as markdown,
//! and the number formats used in its cells.

use std::fmt::Write as _;
use std::time::Duration;

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A report: a title (text only), a line of settings, the table and notes under it.
pub struct Table {
    /// The first line of the text form (the markdown form leaves it to the page).
    pub title: String,
    /// How the figures were measured: mode, rounds, counts.
    pub settings: String,
    /// One heading and alignment per column (see [`Table::head`]).
    pub head: Vec<(String, Align)>,
    /// One cell per column.
    pub rows: Vec<Vec<String>>,
    /// Paragraphs printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    /// The headings of a report: "measure" and "yukicomm", then `others` (what
    /// yukicomm is compared with, the ratio, ...).
    pub fn head(others: impl IntoIterator<Item = (String, Align)>) -> Vec<(String, Align)> {
        [
            ("measure".to_string(), Align::Left),
            ("yukicomm".to_string(), Align::Right),
        ]
        .into_iter()
        .chain(others)
        .collect()
    }

    /// The markdown form if `markdown`, else the text form.
    pub fn render(&self, markdown: bool) -> String {
        if markdown {
            self.markdown()
        } else {
            self.text()
        }
    }

    /// Columns padded to their widest cell, two spaces apart, a rule under the
    /// headings.
    pub fn text(&self) -> String {
        let mut widths: Vec<usize> = self.head.iter().map(|(h, _)| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, cols: &[String]| {
            let mut s = String::new();
            for ((c, w), (_, align)) in cols.iter().zip(&widths).zip(&self.head) {
                let pad = " ".repeat(w - c.chars().count());
                match align {
                    Align::Left => {
                        let _ = write!(s, "{c}{pad}  ");
                    }
                    Align::Right => {
                        let _ = write!(s, "{pad}{c}  ");
                    }
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(out, "{}\n", self.settings);
        let head: Vec<String> = self.head.iter().map(|(h, _)| h.clone()).collect();
        line(&mut out, &head);
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        out.push_str(&"-".repeat(total));
        out.push('\n');
        for row in &self.rows {
            line(&mut out, row);
        }
        let _ = writeln!(out, "\n{}", self.notes.join("\n\n"));
        out
    }

    /// A markdown table, numbers right-aligned.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", self.settings);
        let head: Vec<&str> = self.head.iter().map(|(h, _)| h.as_str()).collect();
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let rule: Vec<&str> = self
            .head
            .iter()
            .map(|(_, align)| match align {
                Align::Left => "---",
                Align::Right => "--:",
            })
            .collect();
        let _ = writeln!(out, "|{}|", rule.join("|"));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        let _ = writeln!(out, "\n{}", self.notes.join("\n\n"));
        out
    }
}

/// Microseconds, one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Millions of messages per second.
pub fn msgs(per_s: f64) -> String {
    format!("{:.2} M msg/s", per_s / 1e6)
}

/// Megabytes per second.
pub fn mbs(per_s: f64) -> String {
    format!("{per_s:.0} MB/s")
}

/// Operations per second, in thousands below a million.
pub fn ops(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M ops/s", per_s / 1e6)
    } else {
        format!("{:.1} k ops/s", per_s / 1e3)
    }
}

/// A ratio, two decimals.
pub fn ratio(x: f64) -> String {
    format!("{x:.2}x")
}

/// `n` with commas between groups of three digits.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}
