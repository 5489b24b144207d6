//! Attendance (勤務実績), for `kakehashi-gateway report attendance` and the
//! portal's download: who worked remotely and when, for section chiefs. Per person per local day: the first session start, the
//! last session end, the total connected time and the terminal classes.
//!
//! Days are local days at the gateway's `[identity] utc_offset_hours`. A
//! session that crosses local midnight counts on both days, split at
//! midnight (the first day ends at `24:00:00`). The connected time is the
//! union of the day's sessions: two sessions open at once (two desks, or a
//! reconnect overlapping the old session) count once. A session still open
//! is counted up to the time of the report and flagged. Days without a
//! session have no row.
//!
//! [`attendance`] is the pure core; [`write_csv`] renders its rows;
//! `read_rows` reads the store one day at a time, so memory stays bounded
//! by one day's sessions plus the rows. The CLI and the portal's
//! `GET /plans/attendance.csv` (a chief, their own department) share them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::ops::RangeInclusive;

use time::{Date, UtcOffset};

use crate::db::Store;
use crate::localtime::{local_date, local_midnight};
use crate::sessions::SessionRecord;
use crate::sheet::Cell::{Plain, Text};
use crate::sheet::SheetWriter;

/// The language of the header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 日本語
    Ja,
    /// English
    En,
}

/// Who a user id is, from the store's users table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Display name.
    pub name: String,
    /// Department.
    pub dept: String,
}

/// One person on one local day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRow {
    /// Local date.
    pub date: Date,
    /// User id.
    pub user_id: String,
    /// Display name (empty if the user is not in the store).
    pub name: String,
    /// Department (empty if the user is not in the store).
    pub dept: String,
    /// First session start within the day (unix seconds).
    pub first_start: i64,
    /// Last session end within the day (unix seconds; local midnight when a
    /// session runs on into the next day).
    pub last_end: i64,
    /// Connected seconds: the union of the day's session intervals.
    pub connected_secs: i64,
    /// Sessions that touched the day.
    pub sessions: usize,
    /// Terminal classes used (`home`, `mobile`, `satellite`).
    pub classes: BTreeSet<String>,
    /// A session of this day is still open (counted up to `now`).
    pub open: bool,
}

/// `HH:MM:SS` of local time `t` on `date` (`24:00:00` for the midnight ending it).
fn clock(t: i64, date: Date, offset: UtcOffset) -> String {
    let secs = t - local_midnight(date, offset);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `H:MM:SS` of a duration.
fn duration(secs: i64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Total length of the union of `[start, end]` intervals.
fn union_len(mut v: Vec<(i64, i64)>) -> i64 {
    v.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(i64, i64)> = None;
    for (s, e) in v {
        match &mut cur {
            Some((_, ce)) if s <= *ce => *ce = (*ce).max(e),
            _ => {
                if let Some((cs, ce)) = cur {
                    total += ce - cs;
                }
                cur = Some((s, e));
            }
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

#[derive(Default)]
struct Acc<'a> {
    pieces: Vec<(i64, i64)>,
    sessions: BTreeSet<&'a str>,
    classes: BTreeSet<String>,
    open: bool,
}

/// The attendance rows for the local days `days`, from `sessions` (any
/// superset of those overlapping the days), sorted by user id then date.
/// `people` gives names and departments; with `dept`, only users of that
/// department are reported (users not in `people` have no department).
/// Sessions still open are counted up to `now`.
pub fn attendance(
    sessions: &[SessionRecord],
    people: &HashMap<String, Person>,
    days: RangeInclusive<Date>,
    offset: UtcOffset,
    now: i64,
    dept: Option<&str>,
) -> Vec<DayRow> {
    let window_start = local_midnight(*days.start(), offset);
    let window_end = days
        .end()
        .next_day()
        .map_or(i64::MAX, |d| local_midnight(d, offset));
    let mut acc: BTreeMap<(&str, Date), Acc> = BTreeMap::new();
    for s in sessions {
        if let Some(d) = dept {
            if people.get(&s.user_id).map(|p| p.dept.as_str()) != Some(d) {
                continue;
            }
        }
        let end = s.ended_at.unwrap_or(now.max(s.started_at));
        // Clip to the window; a session ending exactly at its start stays.
        let (start, end) = (s.started_at.max(window_start), end.min(window_end));
        if start > end
            || start >= window_end
            || (end == window_start && s.started_at < window_start)
        {
            continue;
        }
        let mut from = start;
        let mut date = local_date(from, offset);
        loop {
            let midnight = date
                .next_day()
                .map_or(i64::MAX, |d| local_midnight(d, offset));
            let to = end.min(midnight);
            let a = acc.entry((s.user_id.as_str(), date)).or_default();
            a.pieces.push((from, to));
            a.sessions.insert(s.id.as_str());
            a.classes.insert(s.class.as_str().to_string());
            if s.ended_at.is_none() && to == end {
                a.open = true;
            }
            if end <= midnight {
                break;
            }
            from = midnight;
            let Some(next) = date.next_day() else { break };
            date = next;
        }
    }
    acc.into_iter()
        .map(|((user, date), a)| {
            let p = people.get(user);
            DayRow {
                date,
                user_id: user.to_string(),
                name: p.map(|p| p.name.clone()).unwrap_or_default(),
                dept: p.map(|p| p.dept.clone()).unwrap_or_default(),
                first_start: a.pieces.iter().map(|p| p.0).min().unwrap_or(0),
                last_end: a.pieces.iter().map(|p| p.1).max().unwrap_or(0),
                connected_secs: union_len(a.pieces),
                sessions: a.sessions.len(),
                classes: a.classes,
                open: a.open,
            }
        })
        .collect()
}

/// The UTF-8 byte order mark Excel needs to read UTF-8 CSV.
pub use crate::sheet::BOM;

/// Writes `rows` as CSV with a header line (`lang`), optionally after a BOM.
/// Names and departments are neutralised ([`crate::sheet`]).
pub fn write_csv(
    rows: &[DayRow],
    offset: UtcOffset,
    lang: Lang,
    bom: bool,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    if bom {
        w.write_all(BOM.as_bytes())?;
    }
    let header = match lang {
        Lang::Ja => [
            "日付",
            "職員ID",
            "氏名",
            "所属",
            "最初の開始",
            "最後の終了",
            "接続時間",
            "接続秒数",
            "セッション数",
            "端末区分",
            "接続中",
        ],
        Lang::En => [
            "date",
            "user_id",
            "name",
            "dept",
            "first_start",
            "last_end",
            "connected",
            "connected_secs",
            "sessions",
            "classes",
            "open",
        ],
    };
    let open = match lang {
        Lang::Ja => "接続中",
        Lang::En => "yes",
    };
    let mut csv = SheetWriter::new(w);
    csv.header(&header)?;
    for r in rows {
        let (date, first, last) = (
            r.date.to_string(),
            clock(r.first_start, r.date, offset),
            clock(r.last_end, r.date, offset),
        );
        let (connected, secs, sessions) = (
            duration(r.connected_secs),
            r.connected_secs.to_string(),
            r.sessions.to_string(),
        );
        let classes = r.classes.iter().cloned().collect::<Vec<_>>().join("/");
        csv.row(&[
            Plain(&date),
            Text(&r.user_id),
            Text(&r.name),
            Text(&r.dept),
            Plain(&first),
            Plain(&last),
            Plain(&connected),
            Plain(&secs),
            Plain(&sessions),
            Plain(&classes),
            Plain(if r.open { open } else { "" }),
        ])?;
    }
    csv.flush()
}

/// The users of `dept` (every user without it), by id.
pub async fn people(store: &Store, dept: Option<&str>) -> crate::Result<HashMap<String, Person>> {
    let users = match dept {
        Some(d) => store.list_users_in(d).await?,
        None => store.list_users().await?,
    };
    Ok(users
        .into_iter()
        .map(|u| {
            (
                u.id,
                Person {
                    name: u.name,
                    dept: u.department,
                },
            )
        })
        .collect())
}

/// [`attendance`] over the store's sessions of `days`, read one local day
/// at a time (memory holds one day's sessions, not a month's); sorted by
/// user id then date. The CLI and the portal's download both use this.
pub async fn read_rows(
    store: &Store,
    people: &HashMap<String, Person>,
    days: RangeInclusive<Date>,
    offset: UtcOffset,
    now: i64,
    dept: Option<&str>,
) -> crate::Result<Vec<DayRow>> {
    let mut rows = Vec::new();
    let mut day = *days.start();
    while day <= *days.end() {
        let from = local_midnight(day, offset);
        let Some(next) = day.next_day() else { break };
        let sessions = store
            .sessions_between(from, local_midnight(next, offset))
            .await?;
        rows.extend(attendance(&sessions, people, day..=day, offset, now, dept));
        day = next;
    }
    rows.sort_by(|a, b| (&a.user_id, a.date).cmp(&(&b.user_id, b.date)));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::localtime::{parse_date, parse_month, utc_offset};
    use crate::DeviceClass;

    const JST: i32 = 9 * 3600;

    fn jst() -> UtcOffset {
        utc_offset(JST)
    }

    /// Unix time of local `YYYY-MM-DD` `h:m` in JST.
    fn at(date: &str, h: i64, m: i64) -> i64 {
        local_midnight(parse_date(date).unwrap(), jst()) + h * 3600 + m * 60
    }

    fn session(
        id: &str,
        user: &str,
        class: DeviceClass,
        start: i64,
        end: Option<i64>,
    ) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            user_id: user.into(),
            device_id: "LAPTOP".into(),
            desk_id: "DESK".into(),
            class,
            level: 2,
            transport: "quic".into(),
            started_at: start,
            ended_at: end,
            end_reason: end.map(|_| "closed".into()),
            bytes_up: 0,
            bytes_down: 0,
            gateway: Some("gw1".into()),
        }
    }

    fn people() -> HashMap<String, Person> {
        [
            ("u-sato", "佐藤 花子", "somu"),
            ("u-kato", "加藤, \"一郎\"", "somu"),
            ("u-ito", "伊藤 次郎", "zeimu"),
        ]
        .into_iter()
        .map(|(id, name, dept)| {
            (
                id.to_string(),
                Person {
                    name: name.into(),
                    dept: dept.into(),
                },
            )
        })
        .collect()
    }

    #[test]
    fn dates_and_months() {
        assert_eq!(
            parse_month("2025-02").unwrap(),
            parse_date("2025-02-01").unwrap()..=parse_date("2025-02-28").unwrap()
        );
        assert_eq!(
            *parse_month("2024-02").unwrap().end(),
            parse_date("2024-02-29").unwrap()
        );
        for bad in ["2025-13", "2025-1", "25-01", "2025/01", "", "2025-01-01"] {
            assert!(parse_month(bad).is_err(), "{bad}");
        }
        for bad in ["2025-02-30", "2025-2-01", "2025-02-1", "x"] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
        // 2025-01-06 00:00 JST is 2025-01-05 15:00 UTC.
        assert_eq!(at("2025-01-06", 0, 0), 1_736_089_200);
        assert_eq!(
            local_date(1_736_089_199, jst()),
            parse_date("2025-01-05").unwrap()
        );
        assert_eq!(
            local_date(1_736_089_200, jst()),
            parse_date("2025-01-06").unwrap()
        );
    }

    #[test]
    fn union_of_intervals() {
        assert_eq!(union_len(vec![]), 0);
        assert_eq!(union_len(vec![(0, 10), (5, 15)]), 15);
        assert_eq!(union_len(vec![(20, 30), (0, 10), (10, 12)]), 22);
        assert_eq!(union_len(vec![(0, 100), (10, 20), (30, 40)]), 100);
        assert_eq!(union_len(vec![(5, 5)]), 0);
    }

    #[test]
    fn overlapping_sessions_count_once_and_midnight_splits() {
        let s = vec![
            // 08:30–12:00 home, 11:00–17:45 satellite (overlap 1 h), 19:00–20:00 home.
            session(
                "a",
                "u-sato",
                DeviceClass::Home,
                at("2025-01-06", 8, 30),
                Some(at("2025-01-06", 12, 0)),
            ),
            session(
                "b",
                "u-sato",
                DeviceClass::Satellite,
                at("2025-01-06", 11, 0),
                Some(at("2025-01-06", 17, 45)),
            ),
            session(
                "c",
                "u-sato",
                DeviceClass::Home,
                at("2025-01-06", 19, 0),
                Some(at("2025-01-06", 20, 0)),
            ),
            // 22:00 on the 7th to 01:30 on the 8th.
            session(
                "d",
                "u-sato",
                DeviceClass::Mobile,
                at("2025-01-07", 22, 0),
                Some(at("2025-01-08", 1, 30)),
            ),
        ];
        let days = parse_date("2025-01-06").unwrap()..=parse_date("2025-01-08").unwrap();
        let rows = attendance(&s, &people(), days, jst(), at("2025-02-01", 0, 0), None);
        assert_eq!(rows.len(), 3, "{rows:#?}");
        let r = &rows[0];
        assert_eq!(r.date, parse_date("2025-01-06").unwrap());
        assert_eq!(r.first_start, at("2025-01-06", 8, 30));
        assert_eq!(r.last_end, at("2025-01-06", 20, 0));
        assert_eq!(
            r.connected_secs,
            (9 * 60 + 15) * 60 + 3600,
            "08:30–17:45 plus 19–20"
        );
        assert_eq!(r.sessions, 3);
        assert_eq!(r.classes, ["home", "satellite"].map(String::from).into());
        let (d7, d8) = (&rows[1], &rows[2]);
        assert_eq!(d7.last_end, at("2025-01-08", 0, 0));
        assert_eq!(d7.connected_secs, 2 * 3600);
        assert_eq!(d8.first_start, at("2025-01-08", 0, 0));
        assert_eq!(d8.connected_secs, 90 * 60);
        let mut csv = Vec::new();
        write_csv(&rows, jst(), Lang::En, false, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert_eq!(
            csv,
            "date,user_id,name,dept,first_start,last_end,connected,connected_secs,sessions,classes,open\n\
             2025-01-06,u-sato,佐藤 花子,somu,08:30:00,20:00:00,10:15:00,36900,3,home/satellite,\n\
             2025-01-07,u-sato,佐藤 花子,somu,22:00:00,24:00:00,2:00:00,7200,1,mobile,\n\
             2025-01-08,u-sato,佐藤 花子,somu,00:00:00,01:30:00,1:30:00,5400,1,mobile,\n"
        );
    }

    #[test]
    fn window_clipping_open_sessions_and_departments() {
        let s = vec![
            // Started the evening before the window: only its part inside counts.
            session(
                "a",
                "u-kato",
                DeviceClass::Home,
                at("2025-01-31", 23, 0),
                Some(at("2025-02-01", 0, 30)),
            ),
            // Ended exactly at the window start: nothing inside.
            session(
                "b",
                "u-kato",
                DeviceClass::Home,
                at("2025-01-31", 20, 0),
                Some(at("2025-02-01", 0, 0)),
            ),
            // Still open at `now`.
            session(
                "c",
                "u-kato",
                DeviceClass::Home,
                at("2025-02-03", 9, 0),
                None,
            ),
            // Another department.
            session(
                "d",
                "u-ito",
                DeviceClass::Home,
                at("2025-02-01", 9, 0),
                Some(at("2025-02-01", 10, 0)),
            ),
            // Not in the users table.
            session(
                "e",
                "u-ghost",
                DeviceClass::Home,
                at("2025-02-01", 9, 0),
                Some(at("2025-02-01", 10, 0)),
            ),
        ];
        let month = parse_month("2025-02").unwrap();
        let now = at("2025-02-03", 10, 15);
        let rows = attendance(&s, &people(), month.clone(), jst(), now, Some("somu"));
        assert_eq!(rows.len(), 2, "{rows:#?}");
        assert_eq!(rows[0].first_start, at("2025-02-01", 0, 0));
        assert_eq!(rows[0].connected_secs, 30 * 60);
        assert_eq!(rows[0].sessions, 1);
        assert!(rows[1].open);
        assert_eq!(rows[1].last_end, now);
        assert_eq!(rows[1].connected_secs, 75 * 60);
        let all = attendance(&s, &people(), month, jst(), now, None);
        assert_eq!(
            all.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(),
            ["u-ghost", "u-ito", "u-kato", "u-kato"]
        );
        let mut csv = Vec::new();
        write_csv(&rows, jst(), Lang::Ja, true, &mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "\u{feff}日付,職員ID,氏名,所属,最初の開始,最後の終了,接続時間,接続秒数,セッション数,端末区分,接続中"
        );
        assert_eq!(
            lines.next().unwrap(),
            "2025-02-01,u-kato,\"加藤, \"\"一郎\"\"\",somu,00:00:00,00:30:00,0:30:00,1800,1,home,"
        );
        assert!(lines.next().unwrap().ends_with(",1,home,接続中"));
    }
}
