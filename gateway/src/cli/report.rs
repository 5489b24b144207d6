//! `kakehashi-gateway report attendance`: the attendance report
//! ([`kakehashi_store::attendance`]) of a month, as CSV.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Subcommand, ValueEnum};
use kakehashi_store::attendance::{people, read_rows, write_csv};
use kakehashi_store::localtime::{parse_month, utc_offset};

use super::{open_store, output};

/// `report` subcommands.
#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Attendance (勤務実績): per person per day, first session start, last
    /// session end, connected time and terminal classes, as CSV.
    Attendance {
        /// The month, YYYY-MM (local time).
        #[arg(long)]
        month: String,
        /// Only this department (所属), as recorded for each user.
        #[arg(long)]
        dept: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
        /// Language of the header line.
        #[arg(long, value_enum, default_value_t = Lang::Ja)]
        lang: Lang,
        /// Start the file with a UTF-8 byte order mark (for Excel).
        #[arg(long)]
        bom: bool,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Comma-separated values with a header line, UTF-8.
    Csv,
}

/// Header language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// 日本語
    Ja,
    /// English
    En,
}

/// Run a `report` command on the store of the gateway configuration
/// `config` (its `[identity] utc_offset_hours` gives the local days).
pub async fn run(config: &Path, cmd: ReportCmd) -> anyhow::Result<()> {
    let ReportCmd::Attendance {
        month,
        dept,
        format: ReportFormat::Csv,
        lang,
        bom,
        out,
    } = cmd;
    let (cfg, store) = open_store(config).await?;
    let days = parse_month(&month)?;
    let offset = utc_offset(cfg.relay.identity.utc_offset_secs);
    let people = people(&store, dept.as_deref()).await?;
    if let (Some(d), true) = (&dept, people.is_empty()) {
        eprintln!(
            "注意: 所属 {d:?} の職員は登録されていません / note: no users in department {d:?}"
        );
    }
    let now = kakehashi_store::unix_now();
    let rows = read_rows(&store, &people, days.clone(), offset, now, dept.as_deref()).await?;
    let mut w = output(out.as_deref())?;
    write_csv(&rows, offset, lang.into(), bom, &mut w)?;
    w.flush()?;
    eprintln!(
        "{} 行を出力しました / wrote {} rows ({} – {})",
        rows.len(),
        rows.len(),
        days.start(),
        days.end()
    );
    Ok(())
}

impl From<Lang> for kakehashi_store::attendance::Lang {
    fn from(l: Lang) -> Self {
        match l {
            Lang::Ja => Self::Ja,
            Lang::En => Self::En,
        }
    }
}
