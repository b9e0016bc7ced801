//! Plain-text tables for people: columns padded to the widest cell, two spaces apart, no
//! trailing spaces. Cells are sanitized (control characters become `?`), since they come from
//! the network.

/// A table with a header row.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Space between columns.
const GAP: &str = "  ";

/// Shown for a missing value.
pub const NONE: &str = "-";

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row; missing cells are blank, extra cells are kept (they widen the table).
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c.into())).collect());
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, one line per row, each ending in `\n`.
    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain(std::iter::once(self.header.len()))
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the keys padded to the same width.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let mut t = Table::default();
    for (k, v) in pairs {
        t.row([k.to_string(), v.clone()]);
    }
    // No header: render the rows only.
    let rendered = t.render();
    rendered
        .split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default()
}

/// Display width: characters (good enough for ids, names and addresses).
fn width(s: &str) -> usize {
    s.chars().count()
}

/// Printable on a terminal: control characters (escape sequences among them) become `?`.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `yes` / `no`.
pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// A count, or `-` when the node did not say.
pub fn count(n: Option<u64>) -> String {
    n.map_or_else(|| NONE.to_string(), |n| n.to_string())
}

/// A text, or `-` when empty.
pub fn text(s: &str) -> String {
    if s.is_empty() {
        NONE.to_string()
    } else {
        s.to_string()
    }
}

/// A comma-separated list, or `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        NONE.to_string()
    } else {
        items.join(",")
    }
}

/// `3d 4h`, `2h 5m`, `7m 3s`, `42s`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["NODE", "REGION", "STATE"]);
        t.row(["a", "eu", "live"]);
        t.row(["node-b", "us-east", "dead"]);
        t.row(["c", "", ""]);
        assert_eq!(
            t.render(),
            "NODE    REGION   STATE\n\
             a       eu       live\n\
             node-b  us-east  dead\n\
             c\n"
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn header_only_and_ragged_rows() {
        let t = Table::new(&["A", "B"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "A  B\n");

        let mut t = Table::new(&["A"]);
        t.row(["x", "extra"]);
        t.row(Vec::<String>::new());
        assert_eq!(t.render(), "A\nx  extra\n\n");
    }

    #[test]
    fn unicode_width_and_control_characters() {
        let mut t = Table::new(&["NAME", "X"]);
        t.row(["héllo", "1"]);
        t.row(["bad\nname\t", "2"]);
        assert_eq!(t.render(), "NAME       X\nhéllo      1\nbad?name?  2\n");
    }

    #[test]
    fn key_value_lines() {
        let s = key_values(&[("node", "a".into()), ("sessions", "3".into())]);
        assert_eq!(s, "node      a\nsessions  3\n");
        assert_eq!(key_values(&[]), "");
    }

    #[test]
    fn small_formatters() {
        assert_eq!(yes_no(true), "yes");
        assert_eq!(count(None), "-");
        assert_eq!(count(Some(7)), "7");
        assert_eq!(text(""), "-");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["a".into(), "b".into()]), "a,b");
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(3_600 * 5 + 120), "5h 2m");
        assert_eq!(duration(86_400 * 2 + 3_600), "2d 1h");
    }
}
