//! CSV files as officers save them from a spreadsheet (UTF-8, with or
//! without a BOM, CRLF or LF, quoted fields, a header line, blank lines):
//! each record with the line it starts on, for errors that name the line.

use std::path::Path;

use anyhow::Context as _;

/// The records of `text` (read from `file`), trimmed, each with its line
/// number; blank lines and a first line starting with `header` are skipped.
pub(crate) fn records(
    text: &str,
    file: &Path,
    header: &str,
) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let text = text.trim_start_matches('\u{feff}');
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in csv.records() {
        let record = record.with_context(|| format!("{}: not CSV", file.display()))?;
        // The line the record starts on (csv's own count lags behind
        // after a CRLF line end, which it consumes with the next record).
        let at = record.position().map_or(0, |p| p.byte());
        let at = usize::try_from(at).unwrap_or(usize::MAX).min(text.len());
        let rest = text.as_bytes()[at..].iter();
        let start = at + rest.take_while(|b| matches!(b, b'\r' | b'\n')).count();
        let n = 1 + line_breaks(&text.as_bytes()[..start]);
        let f: Vec<String> = record.iter().map(|s| s.trim().to_owned()).collect();
        if f.iter().all(String::is_empty) || (n == 1 && f[0].starts_with(header)) {
            continue;
        }
        rows.push((n, f));
    }
    Ok(rows)
}

/// Line ends in `bytes` as the CSV reader sees them: `\r\n`, `\n`, or a
/// lone `\r` (what "CSV (Macintosh)" files from Excel for Mac end lines
/// with).
fn line_breaks(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count()
}

/// Reads `file` and returns its [`records`].
pub(crate) fn read(file: &Path, header: &str) -> anyhow::Result<Vec<(usize, Vec<String>)>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    records(&text, file, header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_lf_and_lone_cr_each_end_a_line() {
        assert_eq!(line_breaks(b"a\r\nb\nc\rd\r\r\n"), 5);
    }
}
