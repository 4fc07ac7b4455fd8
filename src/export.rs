//! The legacy data exports: the old backend's three CSV files and its Excel file, byte for byte in its
//! format (people have spreadsheets built on them), written from SQLite in pages so memory stays flat
//! whatever the table size.
//!
//! # How rows are read
//! One read-only connection per export. The id range to export is fixed at the start (the newest row
//! then is the last one exported, so an export of a busy table ends), then rows are read in pages of
//! [`PAGE_ROWS`] by row id (`WHERE id > last ORDER BY id LIMIT n`). Each page is one statement, i.e. one
//! short read transaction that ends before the page is written out: a slow client never holds a read
//! transaction open (which would stop WAL checkpoints). Rows leave in id (insertion) order, as the old
//! backend's did.
//!
//! # Time columns
//! The old backend computed each row's time, day and month at insert time from one clock, and its time
//! of day is UTC; its real exports agree (rows at 23:42 and 23:45 UTC still carry day 7, as on the
//! Sunday afternoon rows before them). So for readings the hub received, the time of day, the day of
//! week (ISO, 1 = Monday) and the month are all derived from `measured_ms` in UTC: every row names one
//! real instant. The stored `time_of_day_s` / `day_of_week` / `month` columns are LOCAL-time features
//! for learning and are deliberately not used for such rows: beside a UTC time they would name the
//! wrong day between UTC midnight and local midnight. `measured_ms` has millisecond precision, so the
//! last three of the six fraction digits are `000`. The fraction is always written, even when it is
//! zero (Python's `str(time)` would have dropped it; the contract and a fixed-width column want it).
//!
//! Imported rows (`source = 'import'`) came from these very CSV files, whose rows have no date: their
//! `measured_ms` is made up. For them the export writes the stored `time_of_day_s`, `day_of_week` and
//! `month` columns as they are, so an imported file exports again as it was read. This requires the
//! importer to store the CSV's values verbatim: `time_of_day_s` = the CSV's `timeOfDay`/`time` as
//! seconds since midnight with its microseconds (a REAL holds them exactly enough: rounding to whole
//! microseconds recovers them), NOT shifted to local time; `day_of_week` = the CSV's day; `month` = the
//! CSV's month number (1..=12). A value out of range exports as an empty field.
//!
//! # Labels
//! An unlabelled row (label NULL) exports its label column empty: that is what Python's `csv` module
//! wrote for `None`, the row's measurements are real and worth keeping, and inventing `False`/`0` would
//! put a wrong label into someone's training data.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rusqlite::Connection;

use crate::readings::ReadingKind;
use crate::store::{self, StoreError};

/// Rows read per page (one short read transaction each).
pub const PAGE_ROWS: usize = 5_000;

/// Data rows an Excel sheet holds: 1,048,576 rows less the header row.
pub const XLSX_MAX_DATA_ROWS: u64 = 1_048_575;

/// The four legacy downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    LightCsv,
    TvCsv,
    ClimateCsv,
    LightXlsx,
}

impl Export {
    pub const ALL: [Export; 4] = [
        Export::LightCsv,
        Export::TvCsv,
        Export::ClimateCsv,
        Export::LightXlsx,
    ];

    /// The file name the old backend gave the download (typos included: people's scripts use them).
    pub fn file_name(self) -> &'static str {
        match self {
            Export::LightCsv => "light_dataset.csv",
            Export::TvCsv => "tv_dataSert.csv",
            Export::ClimateCsv => "wether_dataset.csv",
            Export::LightXlsx => "light_data.xlsx",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Export::LightXlsx => {
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            }
            _ => "text/csv; charset=utf-8",
        }
    }

    /// The readings it exports.
    pub fn kind(self) -> ReadingKind {
        match self {
            Export::LightCsv | Export::LightXlsx => ReadingKind::Light,
            Export::TvCsv => ReadingKind::Tv,
            Export::ClimateCsv => ReadingKind::Climate,
        }
    }
}

/// The header row of each table's export.
pub fn header(kind: ReadingKind) -> &'static [&'static str] {
    match kind {
        ReadingKind::Light => &[
            "id",
            "timeOfDay",
            "temperature",
            "dayOfWeek",
            "weatherConditions",
            "motionDetection",
            "LightIntensity",
            "active",
        ],
        ReadingKind::Tv => &[
            "id",
            "timeOfDay",
            "dayOfWeek",
            "motionDetection",
            "channelOn",
        ],
        ReadingKind::Climate => &[
            "id",
            "time",
            "day",
            "month",
            "outside_temperature",
            "room_temperature",
            "outside_humidity",
            "room_humidity",
            "outside_luminosity",
            "motionDetection",
            "fanLevel",
        ],
    }
}

/// Which readings to export, by `measured_ms`: `since` inclusive, `until` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("writing the Excel file: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Data rows written (the header not counted).
    pub rows: u64,
    /// Rows were left out because the format cannot hold them (Excel's row limit).
    pub truncated: bool,
}

/// The time columns of one row, already decided (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RowTime {
    micros_of_day: Option<i64>,
    day_of_week: Option<u32>,
    month: Option<u32>,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl RowTime {
    fn of_instant(measured_ms: i64) -> RowTime {
        match DateTime::<Utc>::from_timestamp_millis(measured_ms) {
            Some(t) => RowTime {
                micros_of_day: Some(
                    i64::from(t.num_seconds_from_midnight()) * 1_000_000
                        + i64::from(t.nanosecond() / 1_000),
                ),
                day_of_week: Some(t.weekday().number_from_monday()),
                month: Some(t.month()),
            },
            None => RowTime {
                micros_of_day: None,
                day_of_week: None,
                month: None,
            },
        }
    }

    fn as_imported(time_of_day_s: f64, day_of_week: i64, month: i64) -> RowTime {
        let micros = (time_of_day_s * 1e6).round();
        RowTime {
            micros_of_day: (micros >= 0.0 && micros < MICROS_PER_DAY as f64)
                .then_some(micros as i64),
            day_of_week: (1..=7).contains(&day_of_week).then_some(day_of_week as u32),
            month: (1..=12).contains(&month).then_some(month as u32),
        }
    }
}

/// The measured values and label of one row.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    Light {
        temperature: f64,
        motion: bool,
        light_intensity: f64,
        active: Option<bool>,
        weather: Option<String>,
    },
    Tv {
        motion: bool,
        channel: Option<i64>,
    },
    Climate {
        temperature: f64,
        humidity: f64,
        motion: bool,
        fan_level: Option<i64>,
        outside_temperature: Option<f64>,
        outside_humidity: Option<f64>,
        outside_luminosity: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct ExportRow {
    id: i64,
    time: RowTime,
    values: Values,
}

/// The columns read after the common ones, per table.
fn value_columns(kind: ReadingKind) -> &'static str {
    match kind {
        ReadingKind::Light => "temperature, motion, light_intensity, active, weather",
        ReadingKind::Tv => "motion, channel",
        ReadingKind::Climate => {
            "temperature, humidity, motion, fan_level, outside_temperature, outside_humidity, \
             outside_luminosity"
        }
    }
}

fn read_row(kind: ReadingKind, r: &rusqlite::Row) -> rusqlite::Result<ExportRow> {
    let id: i64 = r.get(0)?;
    let measured_ms: i64 = r.get(1)?;
    let source: String = r.get(5)?;
    let time = if source == crate::readings::Source::Import.as_str() {
        RowTime::as_imported(r.get(2)?, r.get(3)?, r.get(4)?)
    } else {
        RowTime::of_instant(measured_ms)
    };
    let values = match kind {
        ReadingKind::Light => Values::Light {
            temperature: r.get(6)?,
            motion: r.get(7)?,
            light_intensity: r.get(8)?,
            active: r.get(9)?,
            weather: r.get(10)?,
        },
        ReadingKind::Tv => Values::Tv {
            motion: r.get(6)?,
            channel: r.get(7)?,
        },
        ReadingKind::Climate => Values::Climate {
            temperature: r.get(6)?,
            humidity: r.get(7)?,
            motion: r.get(8)?,
            fan_level: r.get(9)?,
            outside_temperature: r.get(10)?,
            outside_humidity: r.get(11)?,
            outside_luminosity: r.get(12)?,
        },
    };
    Ok(ExportRow { id, time, values })
}

/// Reads a table's rows in pages, each page in its own short read transaction.
struct PagedRows {
    conn: Connection,
    kind: ReadingKind,
    range: TimeRange,
    /// The last id read; the next page starts after it.
    after_id: i64,
    /// The newest id in range when the export started (None: nothing to export).
    last_id: Option<i64>,
    page_rows: usize,
}

impl PagedRows {
    fn open(db: &Path, kind: ReadingKind, range: TimeRange) -> Result<PagedRows, ExportError> {
        let conn = store::open_reader(db)?;
        let table = store::table(kind);
        // The measured_ms index finds the id span of the range cheaply (covering index); the pages
        // then walk the rowid b-tree. Letting the pages use that index instead would sort every row
        // in range once per page.
        let (first, last): (Option<i64>, Option<i64>) = match (range.since_ms, range.until_ms) {
            (None, None) => conn.query_row(&format!("SELECT MIN(id), MAX(id) FROM {table}"), [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?,
            (since, until) => conn.query_row(
                &format!(
                    "SELECT MIN(id), MAX(id) FROM {table} WHERE measured_ms >= ?1 AND measured_ms < ?2"
                ),
                [since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?,
        };
        Ok(PagedRows {
            conn,
            kind,
            range,
            after_id: first.map_or(0, |f| f - 1),
            last_id: last,
            page_rows: PAGE_ROWS,
        })
    }

    /// The next page (empty at the end).
    fn next_page(&mut self) -> Result<Vec<ExportRow>, ExportError> {
        let Some(last_id) = self.last_id else {
            return Ok(Vec::new());
        };
        if self.after_id >= last_id {
            return Ok(Vec::new());
        }
        let table = store::table(self.kind);
        let filter = match (self.range.since_ms, self.range.until_ms) {
            (None, None) => "",
            // The unary `+` keeps the planner on the rowid range (see `open`).
            _ => "AND +measured_ms >= ?4 AND +measured_ms < ?5",
        };
        let sql = format!(
            "SELECT id, measured_ms, time_of_day_s, day_of_week, month, source, {} FROM {table}
             WHERE id > ?1 AND id <= ?2 {filter} ORDER BY id LIMIT ?3",
            value_columns(self.kind)
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let kind = self.kind;
        let page_rows = self.page_rows as i64;
        let rows: Vec<ExportRow> = if filter.is_empty() {
            stmt.query_map(rusqlite::params![self.after_id, last_id, page_rows], |r| {
                read_row(kind, r)
            })?
            .collect::<rusqlite::Result<_>>()?
        } else {
            stmt.query_map(
                rusqlite::params![
                    self.after_id,
                    last_id,
                    page_rows,
                    self.range.since_ms.unwrap_or(i64::MIN),
                    self.range.until_ms.unwrap_or(i64::MAX)
                ],
                |r| read_row(kind, r),
            )?
            .collect::<rusqlite::Result<_>>()?
        };
        // The statement was stepped to its end: its read transaction is over before the page is
        // written anywhere.
        match rows.last() {
            Some(row) => self.after_id = row.id,
            None => self.after_id = last_id,
        }
        Ok(rows)
    }
}

/// Writes one table as the old backend's CSV (Python `csv` defaults: CRLF, minimal quoting).
pub fn write_csv<W: Write>(
    db: &Path,
    kind: ReadingKind,
    range: TimeRange,
    out: W,
) -> Result<Summary, ExportError> {
    let mut rows = PagedRows::open(db, kind, range)?;
    let mut csv = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Necessary)
        .from_writer(out);
    csv.write_record(header(kind))?;
    let mut record = csv::ByteRecord::new();
    let mut scratch = String::new();
    let mut summary = Summary::default();
    loop {
        let page = rows.next_page()?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            csv_record(row, &mut record, &mut scratch);
            csv.write_byte_record(&record)?;
        }
        summary.rows += page.len() as u64;
    }
    csv.flush()?;
    Ok(summary)
}

/// Appends `field` (formatted into `scratch` by `f`) to `record`.
fn push(record: &mut csv::ByteRecord, scratch: &mut String, f: impl FnOnce(&mut String)) {
    scratch.clear();
    f(scratch);
    record.push_field(scratch.as_bytes());
}

fn csv_record(row: &ExportRow, record: &mut csv::ByteRecord, s: &mut String) {
    record.clear();
    push(record, s, |s| write_int(s, row.id));
    push(record, s, |s| write_time_of_day(s, row.time.micros_of_day));
    match &row.values {
        Values::Light {
            temperature,
            motion,
            light_intensity,
            active,
            weather,
        } => {
            push(record, s, |s| write_python_float(s, *temperature));
            push(record, s, |s| write_opt_int(s, row.time.day_of_week));
            record.push_field(weather.as_deref().unwrap_or("").as_bytes());
            record.push_field(yes_no(*motion).as_bytes());
            push(record, s, |s| write_python_float(s, *light_intensity));
            record.push_field(active.map_or("", python_bool).as_bytes());
        }
        Values::Tv { motion, channel } => {
            push(record, s, |s| write_opt_int(s, row.time.day_of_week));
            record.push_field(python_bool(*motion).as_bytes());
            push(record, s, |s| write_opt_int(s, *channel));
        }
        Values::Climate {
            temperature,
            humidity,
            motion,
            fan_level,
            outside_temperature,
            outside_humidity,
            outside_luminosity,
        } => {
            push(record, s, |s| write_opt_int(s, row.time.day_of_week));
            record.push_field(row.time.month.map_or("", month_name).as_bytes());
            push(record, s, |s| write_two_places(s, *outside_temperature));
            push(record, s, |s| write_two_places(s, Some(*temperature)));
            push(record, s, |s| write_two_places(s, *outside_humidity));
            push(record, s, |s| write_two_places(s, Some(*humidity)));
            push(record, s, |s| write_two_places(s, *outside_luminosity));
            record.push_field(python_bool(*motion).as_bytes());
            push(record, s, |s| write_opt_int(s, *fan_level));
        }
    }
}

fn write_int(s: &mut String, n: i64) {
    let _ = write!(s, "{n}");
}

fn write_opt_int<N: std::fmt::Display>(s: &mut String, n: Option<N>) {
    if let Some(n) = n {
        let _ = write!(s, "{n}");
    }
}

fn write_two_places(s: &mut String, x: Option<f64>) {
    // Rust's `{:.2}` rounds the exact binary value half-to-even, as Python's `'%.2f'` does.
    if let Some(x) = x {
        let _ = write!(s, "{x:.2}");
    }
}

/// `HH:MM:SS.ffffff`; empty when unknown.
fn write_time_of_day(s: &mut String, micros: Option<i64>) {
    if let Some(us) = micros {
        let secs = us / 1_000_000;
        let _ = write!(
            s,
            "{:02}:{:02}:{:02}.{:06}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            us % 1_000_000
        );
    }
}

fn python_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// The English month name (1 = January); empty when out of range.
pub fn month_name(month: u32) -> &'static str {
    const NAMES: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    month
        .checked_sub(1)
        .and_then(|i| NAMES.get(i as usize))
        .copied()
        .unwrap_or("")
}

/// Writes `x` as Python's `repr(float)` does: the shortest digits that read back as `x`, a whole
/// number keeping `.0`, scientific notation (`1e+16`, `1e-05`) below 1e-4 and from 1e16 on.
pub fn write_python_float(s: &mut String, x: f64) {
    if x.is_nan() {
        s.push_str("nan");
        return;
    }
    if x.is_infinite() {
        s.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if x.is_sign_negative() {
        s.push('-');
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. `3.57e1`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    // Python's rule: the decimal point sits `decpt` digits in; fixed notation for -4 < decpt <= 16.
    let decpt = exp + 1;
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-decpt) as usize));
            s.push_str(&digits);
        } else if decpt >= n {
            s.push_str(&digits);
            s.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            s.push_str(".0");
        } else {
            s.push_str(&digits[..decpt as usize]);
            s.push('.');
            s.push_str(&digits[decpt as usize..]);
        }
    } else {
        s.push_str(&digits[..1]);
        if n > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// The light table as the old backend's `light_data.xlsx`, its rows already on disk (constant-memory
/// mode keeps one row in memory), ready to be zipped to any writer with [`PreparedXlsx::save`].
pub struct PreparedXlsx {
    workbook: rust_xlsxwriter::Workbook,
    pub summary: Summary,
}

impl PreparedXlsx {
    /// Writes every light row in range (at most [`XLSX_MAX_DATA_ROWS`], oldest first) into a
    /// constant-memory worksheet whose temporary file lives in `tempdir` (deleted by the OS when the
    /// workbook is dropped: it is unlinked at creation).
    pub fn prepare(
        db: &Path,
        range: TimeRange,
        tempdir: &Path,
    ) -> Result<PreparedXlsx, ExportError> {
        Self::prepare_capped(db, range, tempdir, XLSX_MAX_DATA_ROWS)
    }

    fn prepare_capped(
        db: &Path,
        range: TimeRange,
        tempdir: &Path,
        max_rows: u64,
    ) -> Result<PreparedXlsx, ExportError> {
        let kind = ReadingKind::Light;
        let mut rows = PagedRows::open(db, kind, range)?;
        let mut workbook = rust_xlsxwriter::Workbook::new();
        workbook.set_tempdir(tempdir)?;
        let sheet = workbook.add_worksheet_with_constant_memory();
        for (col, name) in header(kind).iter().enumerate() {
            sheet.write_string(0, col as u16, *name)?;
        }
        let mut summary = Summary::default();
        let mut time = String::new();
        'pages: loop {
            let page = rows.next_page()?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                if summary.rows == max_rows {
                    summary.truncated = true;
                    break 'pages;
                }
                let Values::Light {
                    temperature,
                    motion,
                    light_intensity,
                    active,
                    weather,
                } = &row.values
                else {
                    continue;
                };
                let r = (summary.rows + 1) as u32;
                sheet.write_number(r, 0, row.id as f64)?;
                time.clear();
                write_time_of_day(&mut time, row.time.micros_of_day);
                if !time.is_empty() {
                    sheet.write_string(r, 1, &time)?;
                }
                sheet.write_number(r, 2, *temperature)?;
                if let Some(day) = row.time.day_of_week {
                    sheet.write_number(r, 3, day)?;
                }
                if let Some(w) = weather {
                    sheet.write_string(r, 4, w)?;
                }
                sheet.write_string(r, 5, yes_no(*motion))?;
                sheet.write_number(r, 6, *light_intensity)?;
                if let Some(a) = active {
                    sheet.write_boolean(r, 7, *a)?;
                }
                summary.rows += 1;
            }
        }
        Ok(PreparedXlsx { workbook, summary })
    }

    /// Zips the workbook into `out` as it goes (the zip is written as a stream: no seeking).
    pub fn save<W: Write + Send>(mut self, out: W) -> Result<Summary, ExportError> {
        self.workbook.save_to_writer(out)?;
        Ok(self.summary)
    }
}

/// Writes the light table as `light_data.xlsx` into `out` (see [`PreparedXlsx`]).
pub fn write_xlsx<W: Write + Send>(
    db: &Path,
    range: TimeRange,
    tempdir: &Path,
    out: W,
) -> Result<Summary, ExportError> {
    PreparedXlsx::prepare(db, range, tempdir)?.save(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(x: f64) -> String {
        let mut s = String::new();
        write_python_float(&mut s, x);
        s
    }

    #[test]
    fn floats_print_as_python_repr() {
        // Expected values are Python 3's repr() of the same doubles.
        let cases: &[(f64, &str)] = &[
            (1001.0, "1001.0"),
            (35.7, "35.7"),
            (-25.8, "-25.8"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e22, "1e+22"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (f64::NAN, "nan"),
            (f64::NEG_INFINITY, "-inf"),
            (123.456, "123.456"),
            (0.5, "0.5"),
        ];
        for (x, want) in cases {
            assert_eq!(py(*x), *want, "{x:e}");
        }
    }

    #[test]
    fn two_places_round_like_python() {
        // Python: '%.2f' % x
        for (x, want) in [
            (0.125, "0.12"),
            (0.375, "0.38"),
            (2.675, "2.67"),
            (1.005, "1.00"),
            (30.0, "30.00"),
            (-0.001, "-0.00"),
        ] {
            let mut s = String::new();
            write_two_places(&mut s, Some(x));
            assert_eq!(s, want);
        }
    }

    #[test]
    fn time_columns() {
        // 2024-05-05 is a Sunday; 23:45:22.619 UTC.
        let ms = 1_714_952_722_619;
        let t = RowTime::of_instant(ms);
        let mut s = String::new();
        write_time_of_day(&mut s, t.micros_of_day);
        assert_eq!(s, "23:45:22.619000");
        assert_eq!(t.day_of_week, Some(7));
        assert_eq!(month_name(t.month.unwrap()), "May");

        let t = RowTime::as_imported(16.0 * 3600.0 + 36.0 * 60.0 + 3.164237, 7, 4);
        s.clear();
        write_time_of_day(&mut s, t.micros_of_day);
        assert_eq!(s, "16:36:03.164237");
        assert_eq!((t.day_of_week, t.month), (Some(7), Some(4)));
        // Microseconds survive the REAL column at the very end of the day too.
        let t = RowTime::as_imported(86_399.999_999, 1, 12);
        s.clear();
        write_time_of_day(&mut s, t.micros_of_day);
        assert_eq!(s, "23:59:59.999999");

        let t = RowTime::as_imported(86_400.0, 0, 13);
        assert_eq!(
            t,
            RowTime {
                micros_of_day: None,
                day_of_week: None,
                month: None
            }
        );
        assert_eq!(month_name(0), "");
    }

    #[test]
    fn paging_reads_every_row_once_and_honours_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/smarthub.db");
        let (store, _) = crate::store::Store::open(
            &path,
            &crate::config::StorageSection::default(),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        let conn = Connection::open(&path).unwrap();
        for i in 0..23i64 {
            conn.execute(
                "INSERT INTO tv_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week,
                 month, backdated, source, motion, channel) VALUES ('n', ?1, ?1, 0, 1, 1, 0, 'mqtt', 1, ?2)",
                rusqlite::params![1_000_000 + i * 1000, i % 7],
            )
            .unwrap();
        }
        let ids = |range: TimeRange| {
            let mut rows = PagedRows::open(&path, ReadingKind::Tv, range).unwrap();
            rows.page_rows = 5;
            let mut ids = Vec::new();
            loop {
                let page = rows.next_page().unwrap();
                if page.is_empty() {
                    break;
                }
                assert!(page.len() <= 5);
                ids.extend(page.iter().map(|r| r.id));
            }
            ids
        };
        assert_eq!(ids(TimeRange::default()), (1..=23).collect::<Vec<_>>());
        assert_eq!(
            ids(TimeRange {
                since_ms: Some(1_003_000),
                until_ms: Some(1_010_000)
            }),
            (4..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            ids(TimeRange {
                since_ms: Some(2_000_000),
                until_ms: None
            }),
            Vec::<i64>::new()
        );
        drop(conn);
        store.close();
    }

    #[test]
    fn excel_stops_at_the_row_cap_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/smarthub.db");
        let (store, _) = crate::store::Store::open(
            &path,
            &crate::config::StorageSection::default(),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        let conn = Connection::open(&path).unwrap();
        for i in 0..4i64 {
            conn.execute(
                "INSERT INTO light_readings (node_id, measured_ms, received_ms, time_of_day_s, day_of_week,
                 month, backdated, source, temperature, motion, light_intensity, active)
                 VALUES ('n', ?1, ?1, 0, 1, 1, 0, 'mqtt', 20.5, 1, 300, 1)",
                [1_000_000 + i],
            )
            .unwrap();
        }
        let capped = PreparedXlsx::prepare_capped(&path, TimeRange::default(), dir.path(), 3)
            .unwrap()
            .summary;
        assert_eq!(
            capped,
            Summary {
                rows: 3,
                truncated: true
            }
        );
        let exact = PreparedXlsx::prepare_capped(&path, TimeRange::default(), dir.path(), 4)
            .unwrap()
            .summary;
        assert_eq!(
            exact,
            Summary {
                rows: 4,
                truncated: false
            }
        );
        drop(conn);
        store.close();
    }
}
