//! The telework plan import (`kakehashi-gateway admin plan import FILE`):
//! the CSV text as a spreadsheet or HR system writes it (invalid UTF-8 is
//! refused when the file is read, and here too), through the gateway's
//! `parse_plans` and then the store's `PlanSpec::validate`, as the import
//! does before it writes anything.
//!
//! No panic; every row read has start before end within the day, a line
//! number inside the text (lines end with CRLF, LF or a lone CR, as
//! spreadsheets write them) and in increasing order, and trimmed fields;
//! errors name the file.
#![no_main]

use std::path::Path;

use kakehashi_gateway::cli::plan::parse_plans;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("plans.csv");
    let rows = match parse_plans(text, file) {
        Ok(rows) => rows,
        Err(e) => {
            assert!(e.to_string().starts_with("plans.csv"), "{e:#}");
            return;
        }
    };
    // Lines end as the CSV reader ends them: CRLF, LF, or CR alone.
    let lines = 1 + text.replace("\r\n", "\n").matches(['\n', '\r']).count();
    let mut last = 0;
    for (n, spec, _status) in &rows {
        assert!(*n > last && *n <= lines, "line {n} after {last} of {lines}");
        last = *n;
        assert!(
            spec.start_min < spec.end_min && spec.end_min <= 1440,
            "{spec:?}"
        );
        for f in [&spec.user_id, &spec.date, &spec.place] {
            assert_eq!(f.trim(), f.as_str(), "{spec:?}");
        }
        if let Err(e) = spec.validate() {
            let _ = e.to_string();
        }
    }
});
