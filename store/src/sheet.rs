//! CSV for spreadsheets (the audit export, the attendance report): RFC 4180
//! through the `csv` crate, with every cell of text from people or from the
//! outside neutralised against spreadsheet formula injection.

use std::borrow::Cow;
use std::io::{self, Write};

/// The UTF-8 byte order mark Excel needs to read UTF-8 CSV.
pub const BOM: &str = "\u{feff}";

/// One cell of a row.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    /// Text from people or from the outside (names, reasons, details): a
    /// spreadsheet must not run it as a formula, see [`neutralise`].
    Text(&'a str),
    /// Text this program made (numbers, dates, hashes, header names): written as it is.
    Plain(&'a str),
}

/// Text that a spreadsheet would run as a formula (starting with `=`, `+`,
/// `-`, `@`, tab or CR) prefixed with `'`; other text as it is.
pub fn neutralise(s: &str) -> Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{s}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A CSV writer for spreadsheets: fields quoted only where they need it
/// (a comma, quote or line break), lines ending in `\n`, [`Cell::Text`]
/// neutralised.
#[derive(Debug)]
pub struct SheetWriter<W: Write> {
    csv: csv::Writer<W>,
}

impl<W: Write> SheetWriter<W> {
    /// A writer on `w` (buffered; call [`SheetWriter::flush`] at the end).
    pub fn new(w: W) -> Self {
        Self {
            csv: csv::WriterBuilder::new().from_writer(w),
        }
    }

    /// Writes one row.
    pub fn row(&mut self, cells: &[Cell<'_>]) -> io::Result<()> {
        for c in cells {
            match *c {
                Cell::Text(s) => self.csv.write_field(neutralise(s).as_bytes())?,
                Cell::Plain(s) => self.csv.write_field(s)?,
            }
        }
        self.csv.write_record(None::<&[u8]>)?;
        Ok(())
    }

    /// Writes a header row of plain names.
    pub fn header(&mut self, names: &[&str]) -> io::Result<()> {
        self.csv.write_record(names)?;
        Ok(())
    }

    /// Writes out what is buffered and flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.csv.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(c: Cell<'_>) -> String {
        let mut out = Vec::new();
        let mut w = SheetWriter::new(&mut out);
        w.row(&[c, Cell::Plain("x")]).unwrap();
        w.flush().unwrap();
        drop(w);
        let line = String::from_utf8(out).unwrap();
        line.strip_suffix(",x\n").expect("one line").to_string()
    }

    #[test]
    fn quoted_only_where_needed_and_formulas_neutralised() {
        assert_eq!(one(Cell::Text("plain")), "plain");
        assert_eq!(one(Cell::Plain("a,b")), "\"a,b\"");
        assert_eq!(one(Cell::Plain("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(one(Cell::Plain("two\nlines")), "\"two\nlines\"");
        assert_eq!(one(Cell::Plain("cr\rhere")), "\"cr\rhere\"");
        assert_eq!(one(Cell::Text("=SUM(A1)")), "'=SUM(A1)");
        assert_eq!(one(Cell::Text("=SUM(A1,A2)")), "\"'=SUM(A1,A2)\"");
        for f in ["+1", "-1", "@x", "\tx"] {
            assert_eq!(one(Cell::Text(f)), format!("'{f}"));
        }
        assert_eq!(one(Cell::Text("\rx")), "\"'\rx\"");
        assert_eq!(one(Cell::Plain("=1")), "=1");
        assert_eq!(one(Cell::Text("")), "");
        assert_eq!(one(Cell::Text(" lead")), " lead");
        assert_eq!(one(Cell::Text("佐藤 #1")), "佐藤 #1");
    }
}
