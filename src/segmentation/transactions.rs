//! Reading a transaction log (CSV or Parquet) into typed purchase lines.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use arrow_array::{cast::AsArray, Array};
use arrow_schema::DataType;
use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::error::{RowProblem, SegmentationError};
use crate::data::text::{csv_reader, parse_number, parse_quantity, Delimiter, TextFormat};
use crate::data::{resolve_columns, with_delimiter_hint, DataError, TableFormat};
use crate::error::Result;

/// Which columns of the log hold what. Only the first three are required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionColumns {
    pub customer: String,
    /// ISO 8601 dates (`2024-03-01`) or timestamps (`2024-03-01T10:15:00Z`,
    /// `2024-03-01 10:15:00`); Parquet date and timestamp columns too.
    pub date: String,
    /// The line's spend; with `quantity`, the unit price.
    pub amount: String,
    /// When given, a line's spend is `amount × quantity` (as in the UCI
    /// Online Retail data: unit price and quantity, returns negative).
    pub quantity: Option<String>,
    /// When given, frequency counts distinct orders instead of purchase days.
    pub order: Option<String>,
}

impl Default for TransactionColumns {
    fn default() -> Self {
        Self {
            customer: "customer_id".into(),
            date: "date".into(),
            amount: "amount".into(),
            quantity: None,
            order: None,
        }
    }
}

/// What to do with a row that cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BadRowPolicy {
    /// Leave it out, count it and report the first few row numbers.
    #[default]
    Skip,
    /// Stop with an error naming the row.
    Reject,
}

/// One readable line of the log, customers and orders interned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub customer: u32,
    /// Days since 1970-01-01.
    pub day: i32,
    /// Negative for refunds and returns.
    pub spend: f64,
    pub order: Option<u32>,
}

/// One unreadable row, for a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BadRowExample {
    /// 1-based, header excluded.
    pub row: usize,
    pub problem: RowProblem,
    pub column: String,
    /// The field as written (clipped to 40 characters).
    pub value: String,
    /// The option that would read it, when one would (e.g. `--decimal-comma`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The skipped rows of a load, by problem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BadRows {
    pub total: usize,
    pub by_problem: BTreeMap<RowProblem, usize>,
    /// The first few skipped rows, and the first of every problem.
    #[serde(deserialize_with = "examples_any_version")]
    pub examples: Vec<BadRowExample>,
}

const EXAMPLES: usize = 10;

/// Reads examples as this version writes them, or as `[row, problem]`
/// pairs (files written before examples had columns and values).
fn examples_any_version<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<BadRowExample>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        Now(BadRowExample),
        Pair(usize, RowProblem),
    }
    Ok(Vec::<Any>::deserialize(d)?
        .into_iter()
        .map(|a| match a {
            Any::Now(e) => e,
            Any::Pair(row, problem) => BadRowExample {
                row,
                problem,
                column: String::new(),
                value: String::new(),
                fix: None,
            },
        })
        .collect())
}

impl BadRows {
    fn record(&mut self, example: BadRowExample) {
        self.total += 1;
        let count = self.by_problem.entry(example.problem.clone()).or_default();
        *count += 1;
        if self.examples.len() < EXAMPLES || *count == 1 {
            self.examples.push(example);
        }
    }

    /// These counts and examples without the cells' values, for whatever is
    /// written to a file: an unreadable cell can be anything (a name or an
    /// e-mail shifted into the amount column), and a report is shared.
    pub fn without_values(&self) -> Self {
        let mut out = self.clone();
        for e in &mut out.examples {
            e.value.clear();
        }
        out
    }

    /// One line: how many rows by problem, an example of each (with its
    /// value when `values`) and the option that would fix it.
    pub fn summary(&self, values: bool) -> String {
        self.by_problem
            .iter()
            .map(|(problem, n)| {
                let mut part = format!("{} with {problem}", thousands(*n));
                if let Some(e) = self.examples.iter().find(|e| &e.problem == problem) {
                    part.push_str(&format!(" (e.g. row {}, column {:?}", e.row, e.column));
                    if values && !e.value.is_empty() {
                        part.push_str(&format!(": {:?}", e.value));
                    }
                    if let Some(fix) = &e.fix {
                        part.push_str(&format!("; {fix}"));
                    }
                    part.push(')');
                }
                part
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A parsed transaction log.
#[derive(Debug, Clone, Default)]
pub struct TransactionLog {
    /// Customer ids in order of first appearance; `Line::customer` indexes it.
    pub customer_ids: Vec<String>,
    pub lines: Vec<Line>,
    pub rows_read: usize,
    pub bad_rows: BadRows,
    /// The field separator used (`None` for Parquet).
    pub delimiter: Option<Delimiter>,
    /// How dates were read, in words (e.g. "ISO 8601", "%d/%m/%Y (detected)").
    pub date_format: String,
    /// Lines left out for a date after today ([`Self::leave_out_future`]).
    pub future: FutureLines,
}

/// Lines dated after the day they were read: typos (2099 for 2019) or
/// scheduled orders. Left in, one such line would move the default as-of
/// date and every customer's recency and tenure with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FutureLines {
    pub lines: usize,
    /// The latest of their dates.
    pub latest: Option<NaiveDate>,
    /// A date later than today that the job asked for itself (`--as-of`,
    /// a holdout end): lines up to it were kept. `None`: today.
    #[serde(default)]
    pub after: Option<NaiveDate>,
}

impl FutureLines {
    /// "today", or the later date asked for.
    fn cutoff(&self) -> String {
        self.after
            .map_or("today".to_owned(), |d| format!("{d}, the date asked for"))
    }

    /// What to tell the user, when any line was left out.
    pub fn warning(&self) -> Option<String> {
        let latest = self.latest?;
        Some(format!(
            "{} line{} dated after {} (the latest {latest}) left out: check the dates",
            self.lines,
            if self.lines == 1 { "" } else { "s" },
            self.cutoff()
        ))
    }
}

impl TransactionLog {
    /// Leaves out the lines dated after `today` plus one day (a log written
    /// in a time zone ahead of this machine's clock is not in the future),
    /// or after `asked`, a later date the job names itself (`--as-of`).
    /// A log with nothing left is an error that says why.
    pub fn leave_out_future(
        &mut self,
        today: NaiveDate,
        asked: Option<NaiveDate>,
    ) -> std::result::Result<(), SegmentationError> {
        let after = asked.filter(|&d| d > today);
        let limit = after.map_or(day_number(today) + 1, day_number);
        let mut latest = None;
        let before = self.lines.len();
        self.lines.retain(|l| {
            let future = l.day > limit;
            if future {
                latest = latest.max(Some(l.day));
            }
            !future
        });
        self.future = FutureLines {
            lines: before - self.lines.len(),
            latest: latest.map(date_of),
            after,
        };
        match (self.lines.is_empty(), self.future.latest) {
            (true, Some(latest)) => Err(SegmentationError::OnlyFutureLines {
                lines: self.future.lines,
                latest,
                after: self.future.cutoff(),
            }),
            _ => Ok(()),
        }
    }
}

/// Parses a date or timestamp as written (its calendar date, time zones not
/// converted), as days since 1970-01-01: ISO 8601, and year-first dates
/// with `/` or `.`.
pub fn parse_day(text: &str) -> Option<i32> {
    let text = text.trim();
    let date = ["%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d"]
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(text, f).ok())
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.date_naive())
        })
        .or_else(|| {
            [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
            ]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
            .map(|t| t.date())
        })?;
    in_range(date)
}

/// Years outside 1900–9998 are typos or sentinels (9999-12-31), not
/// purchases; the as-of date must also fit after the latest one.
fn in_range(date: NaiveDate) -> Option<i32> {
    (1900..=9998)
        .contains(&chrono::Datelike::year(&date))
        .then(|| day_number(date))
}

/// Parses `text` with a strftime format (a date, or a date and time).
pub fn parse_day_as(text: &str, format: &str) -> Option<i32> {
    let text = text.trim();
    NaiveDate::parse_from_str(text, format)
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, format)
                .ok()
                .map(|t| t.date())
        })
        .and_then(in_range)
}

/// Whether `format` is a strftime format chrono can use.
pub fn check_date_format(format: &str) -> std::result::Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if format.trim().is_empty() || StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "invalid date format {format:?}: expected strftime, e.g. %d/%m/%Y"
        ));
    }
    Ok(())
}

/// A `1/3/2024`-style date (day and month in an order the file must
/// settle), with any time after it ignored: the two leading numbers, the
/// year and the separator.
fn numeric_date(text: &str) -> Option<(u32, u32, i32, char)> {
    let date = text.trim().split([' ', 'T']).next()?;
    let sep = date.chars().find(|c| matches!(c, '/' | '.' | '-'))?;
    let mut parts = date.split(sep);
    let (a, b, y) = (parts.next()?, parts.next()?, parts.next()?);
    let short = |p: &str| (1..=2).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit());
    if parts.next().is_some() || !short(a) || !short(b) || y.len() != 4 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?, y.parse().ok()?, sep))
}

/// Which comes first in a `1/3/2024`-style date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateOrder {
    DayFirst,
    MonthFirst,
}

impl DateOrder {
    fn format(self, sep: char) -> String {
        match self {
            Self::DayFirst => format!("%d{sep}%m{sep}%Y"),
            Self::MonthFirst => format!("%m{sep}%d{sep}%Y"),
        }
    }

    fn date(self, a: u32, b: u32, year: i32) -> Option<i32> {
        let (day, month) = match self {
            Self::DayFirst => (a, b),
            Self::MonthFirst => (b, a),
        };
        NaiveDate::from_ymd_opt(year, month, day).and_then(in_range)
    }
}

/// A line whose date waits for the file to settle the day/month order.
struct PendingDate {
    line: usize,
    row: usize,
    a: u32,
    b: u32,
    year: i32,
    sep: char,
}

pub fn day_number(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days() as i32
}

/// The date of a day number, clamped to the calendar's range.
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .expect("valid")
        .checked_add_signed(chrono::TimeDelta::days(day as i64))
        .unwrap_or(if day < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        })
}

/// Builds the log row by row, whatever the file format.
struct Builder<'a> {
    columns: &'a TransactionColumns,
    format: &'a TextFormat,
    policy: BadRowPolicy,
    customers: HashMap<String, u32>,
    orders: HashMap<String, u32>,
    pending: Vec<PendingDate>,
    /// Fields read from typed Parquet columns (numbers, dates): their text
    /// is canonical, whatever the text format says.
    typed: [bool; 5],
    log: TransactionLog,
}

/// Digits in a value that does not start with a four-digit year.
fn looks_like_other_date(value: &str) -> bool {
    let v = value.trim();
    let year_first = v
        .as_bytes()
        .get(..4)
        .is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    v.bytes().any(|b| b.is_ascii_digit()) && !year_first
}

/// A field quoted in an example: clipped, so a huge cell stays small.
fn clip_value(v: &str) -> String {
    if v.chars().count() <= 40 {
        v.to_owned()
    } else {
        v.chars().take(40).chain("…".chars()).collect()
    }
}

/// A row's problem: what, in which column, the value as written.
type Problem<'c, 'r> = (RowProblem, &'c str, &'r str);

/// One row's fields as text, in the order customer, date, amount, quantity, order.
type Fields<'r> = [Option<&'r str>; 5];

impl<'a> Builder<'a> {
    fn new(columns: &'a TransactionColumns, format: &'a TextFormat, policy: BadRowPolicy) -> Self {
        Self {
            columns,
            format,
            policy,
            customers: HashMap::new(),
            orders: HashMap::new(),
            pending: Vec::new(),
            typed: [false; 5],
            log: TransactionLog::default(),
        }
    }

    fn push(&mut self, fields: Fields) -> Result<()> {
        self.log.rows_read += 1;
        let row = self.log.rows_read;
        match self.parse(fields, row) {
            Ok(line) => self.log.lines.push(line),
            Err((problem, column, value)) => self.bad(row, problem, column, value)?,
        }
        Ok(())
    }

    fn bad(&mut self, row: usize, problem: RowProblem, column: &str, value: &str) -> Result<()> {
        match self.policy {
            BadRowPolicy::Skip => {
                let fix = self.fix(&problem, value);
                self.log.bad_rows.record(BadRowExample {
                    row,
                    problem,
                    column: column.to_owned(),
                    value: clip_value(value),
                    fix,
                });
                Ok(())
            }
            BadRowPolicy::Reject => Err(SegmentationError::BadRow {
                row,
                problem,
                column: column.to_owned(),
                value: value.to_owned(),
            }
            .into()),
        }
    }

    /// The option that would read `value`, when one would.
    fn fix(&self, problem: &RowProblem, value: &str) -> Option<String> {
        let comma = self.format.decimal_comma;
        match problem {
            RowProblem::BadAmount | RowProblem::BadQuantity => {
                parse_number(value, !comma).map(|_| {
                    if comma {
                        "it reads without --decimal-comma".to_owned()
                    } else {
                        "pass --decimal-comma".to_owned()
                    }
                })
            }
            // A year-first value is an ISO date with a typo, not another format.
            RowProblem::BadDate if looks_like_other_date(value) => {
                Some(match &self.format.date_format {
                    Some(f) => format!("it does not match --date-format {f:?}"),
                    None => "pass --date-format with its strftime format, e.g. %d.%m.%Y".to_owned(),
                })
            }
            RowProblem::NotUtf8 => {
                Some("save the file as UTF-8 (it may be Latin-1 or Windows-1252)".to_owned())
            }
            _ => None,
        }
    }

    /// A row with a field that is not UTF-8: counted and handled as every
    /// bad row is (`value` is that field, its bad bytes replaced).
    fn push_not_utf8(&mut self, column: &str, value: &str) -> Result<()> {
        self.log.rows_read += 1;
        let row = self.log.rows_read;
        self.bad(row, RowProblem::NotUtf8, column, value)
    }

    fn parse<'r>(&mut self, f: Fields<'r>, row: usize) -> std::result::Result<Line, Problem<'a, 'r>>
    where
        'a: 'r,
    {
        let c = self.columns;
        let id = f[0].map(str::trim).unwrap_or("");
        if id.is_empty() {
            return Err((RowProblem::MissingCustomerId, &c.customer, id));
        }
        let date = f[1].unwrap_or("");
        let bad_date = (RowProblem::BadDate, c.date.as_str(), date);
        let (day, pending) = match &self.format.date_format {
            // A given format, and ISO 8601 for the rows that use it.
            Some(format) if !self.typed[1] => (
                parse_day_as(date, format)
                    .or_else(|| parse_day(date))
                    .ok_or(bad_date)?,
                None,
            ),
            _ => match parse_day(date) {
                Some(day) => (day, None),
                None => (0, Some(numeric_date(date).ok_or(bad_date)?)),
            },
        };
        let comma = |field: usize| self.format.decimal_comma && !self.typed[field];
        let amount = f[2].unwrap_or("");
        let mut spend = parse_number(amount, comma(2)).ok_or((
            RowProblem::BadAmount,
            c.amount.as_str(),
            amount,
        ))?;
        if let Some(name) = &c.quantity {
            let q = f[3].unwrap_or("");
            spend *=
                parse_quantity(q, comma(3)).ok_or((RowProblem::BadQuantity, name.as_str(), q))?;
        }
        if let Some((a, b, year, sep)) = pending {
            self.pending.push(PendingDate {
                line: self.log.lines.len(),
                row,
                a,
                b,
                year,
                sep,
            });
        }
        let order = f[4]
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| intern(&mut self.orders, o));
        let customer = intern(&mut self.customers, id);
        Ok(Line {
            customer,
            day,
            spend,
            order,
        })
    }

    /// Dates written `1/3/2024` are read once the whole file has said
    /// which order it uses: a first number above 12 means day first, a
    /// second above 12 month first. The majority order wins (the others are
    /// bad dates); a file where nothing settles it is an error asking for
    /// `--date-format`.
    fn settle_dates(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            self.log.date_format = match &self.format.date_format {
                Some(f) => format!("{f} (given)"),
                None => "ISO 8601".into(),
            };
            return Ok(());
        }
        let day_first = self.pending.iter().filter(|p| p.a > 12).count();
        let month_first = self.pending.iter().filter(|p| p.b > 12).count();
        // The separator most of these dates use.
        let mut seps: Vec<(char, usize)> = Vec::new();
        for p in &self.pending {
            match seps.iter_mut().find(|(c, _)| *c == p.sep) {
                Some((_, n)) => *n += 1,
                None => seps.push((p.sep, 1)),
            }
        }
        let sep = seps.iter().max_by_key(|(_, n)| *n).map_or('/', |(c, _)| *c);
        let order = match (day_first, month_first) {
            // Most dates written this way and nothing settles the order:
            // ask. A few such dates among ISO ones are bad rows.
            (0, 0) if 2 * self.pending.len() > self.log.rows_read => {
                let p = &self.pending[0];
                return Err(SegmentationError::AmbiguousDates {
                    column: self.columns.date.clone(),
                    example: format!("{:02}{sep}{:02}{sep}{}", p.a, p.b, p.year),
                    day_first: DateOrder::DayFirst.format(sep),
                    month_first: DateOrder::MonthFirst.format(sep),
                }
                .into());
            }
            (0, 0) => None,
            (d, m) if d >= m => Some(DateOrder::DayFirst),
            _ => Some(DateOrder::MonthFirst),
        };
        self.log.date_format = match order {
            Some(o) => format!("{} (detected)", o.format(sep)),
            None => "ISO 8601".into(),
        };
        let mut drop = vec![false; self.log.lines.len()];
        for p in std::mem::take(&mut self.pending) {
            match order.and_then(|o| o.date(p.a, p.b, p.year)) {
                Some(day) if p.sep == sep => self.log.lines[p.line].day = day,
                _ => {
                    drop[p.line] = true;
                    let value = format!("{:02}{}{:02}{}{}", p.a, p.sep, p.b, p.sep, p.year);
                    let column = self.columns.date.clone();
                    self.bad(p.row, RowProblem::BadDate, &column, &value)?;
                }
            }
        }
        if drop.iter().any(|&d| d) {
            let mut i = 0;
            self.log.lines.retain(|_| {
                i += 1;
                !drop[i - 1]
            });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<TransactionLog> {
        self.settle_dates()?;
        let mut ids = vec![String::new(); self.customers.len()];
        for (id, i) in self.customers {
            ids[i as usize] = id;
        }
        self.log.customer_ids = ids;
        Ok(self.log)
    }
}

fn intern(map: &mut HashMap<String, u32>, key: &str) -> u32 {
    if let Some(&i) = map.get(key) {
        return i;
    }
    let i = map.len() as u32;
    map.insert(key.to_owned(), i);
    i
}

/// Reads a transaction log written in the default text format (see
/// [`read_transactions_as`]).
pub fn read_transactions(
    path: &Path,
    columns: &TransactionColumns,
    policy: BadRowPolicy,
) -> Result<TransactionLog> {
    read_transactions_as(path, columns, &TextFormat::default(), policy)
}

/// Reads a transaction log whose text is written as `format` says (Parquet
/// string columns too). Bad rows are skipped and counted, or rejected, as
/// `policy` says; unknown column names are an error listing the header.
pub fn read_transactions_as(
    path: &Path,
    columns: &TransactionColumns,
    format: &TextFormat,
    policy: BadRowPolicy,
) -> Result<TransactionLog> {
    if let Some(f) = &format.date_format {
        check_date_format(f).map_err(|message| DataError::Malformed {
            path: path.to_owned(),
            message,
        })?;
    }
    let table = TableFormat::from_path(path)?;
    let file = File::open(path).map_err(|error| DataError::Io {
        path: path.to_owned(),
        error,
    })?;
    let mut builder = Builder::new(columns, format, policy);
    match table {
        TableFormat::Csv => read_csv(file, path, &mut builder)?,
        TableFormat::Parquet => crate::data::guard_parquet(
            || read_parquet(file, path, &mut builder),
            || crate::data::damaged_parquet(path).into(),
        )?,
    }
    builder.finish()
}

fn wanted(columns: &TransactionColumns) -> Vec<Option<String>> {
    vec![
        Some(columns.customer.clone()),
        Some(columns.date.clone()),
        Some(columns.amount.clone()),
        columns.quantity.clone(),
        columns.order.clone(),
    ]
}

/// Positions of the five fields in `header` (`None` for optional ones not
/// used). A header that did not split on `delimiter` gets a hint.
fn positions(
    header: &[String],
    columns: &TransactionColumns,
    delimiter: Option<Delimiter>,
) -> Result<Vec<Option<usize>>> {
    wanted(columns)
        .into_iter()
        .map(|name| match name {
            Some(name) => Ok(Some(
                resolve_columns(header, &[name]).map_err(|e| match delimiter {
                    Some(d) => with_delimiter_hint(e, header, d),
                    None => e,
                })?[0],
            )),
            None => Ok(None),
        })
        .collect()
}

fn malformed(path: &Path, message: impl std::fmt::Display) -> DataError {
    DataError::Malformed {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read_csv(file: File, path: &Path, builder: &mut Builder) -> Result<()> {
    let (mut reader, delimiter) = csv_reader(
        std::io::BufReader::with_capacity(1 << 20, file),
        builder.format,
        true,
    )
    .map_err(|error| DataError::Io {
        path: path.to_owned(),
        error,
    })?;
    builder.log.delimiter = Some(delimiter);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| malformed(path, e))?
        .iter()
        .map(str::to_owned)
        .collect();
    let at = positions(&header, builder.columns, Some(delimiter))?;
    // Bytes first: a field that is not UTF-8 is one bad row, not the end
    // of the read.
    let mut record = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| malformed(path, e))?
    {
        let mut fields: Fields = [None; 5];
        let mut not_utf8 = None;
        for (field, c) in fields.iter_mut().zip(&at) {
            if let Some(c) = *c {
                let bytes = record.get(c).unwrap_or(b"");
                match std::str::from_utf8(bytes) {
                    Ok(text) => *field = Some(text),
                    Err(_) => {
                        not_utf8.get_or_insert((c, bytes));
                    }
                }
            }
        }
        match not_utf8 {
            None => builder.push(fields)?,
            Some((c, bytes)) => {
                builder.push_not_utf8(&header[c], &String::from_utf8_lossy(bytes))?
            }
        }
    }
    Ok(())
}

/// Parquet columns are cast to text and parsed like CSV fields, so both
/// formats accept and reject exactly the same values. Dates and timestamps
/// cast to ISO 8601 text.
fn read_parquet(file: File, path: &Path, builder: &mut Builder) -> Result<()> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| malformed(path, e))?;
    let header: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().trim().to_owned())
        .collect();
    let at = positions(&header, builder.columns, None)?;
    for (field, c) in at.iter().enumerate() {
        if let Some(c) = c {
            let t = reader.schema().field(*c).data_type().clone();
            builder.typed[field] = t.is_numeric() || t.is_temporal();
        }
    }
    let reader = reader
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| malformed(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| malformed(path, e))?;
        let text: Vec<Option<arrow_array::ArrayRef>> = at
            .iter()
            .map(|c| {
                c.map(|c| {
                    arrow_cast::cast(batch.column(c), &DataType::Utf8)
                        .map_err(|e| malformed(path, format!("column {:?}: {e}", header[c])))
                })
                .transpose()
            })
            .collect::<std::result::Result<_, _>>()?;
        let strings: Vec<Option<&arrow_array::StringArray>> = text
            .iter()
            .map(|a| a.as_ref().map(|a| a.as_string::<i32>()))
            .collect();
        for i in 0..batch.num_rows() {
            let fields: Fields = std::array::from_fn(|f| {
                strings[f].map(|s| if s.is_null(i) { "" } else { s.value(i) })
            });
            builder.push(fields)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tomorrow is kept (time zones), later days are not, unless the job
    /// asked for a later date; a log with only such lines is an error.
    #[test]
    fn future_lines_are_left_out_up_to_the_date_asked_for() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let day = |offset: i32| day_number(today) + offset;
        let log = |days: &[i32]| TransactionLog {
            customer_ids: vec!["a".into()],
            lines: days
                .iter()
                .map(|&day| Line {
                    customer: 0,
                    day,
                    spend: 1.0,
                    order: None,
                })
                .collect(),
            ..Default::default()
        };
        let days = [day(-3), day(1), day(2), day(40)];
        let mut plain = log(&days);
        plain.leave_out_future(today, None).unwrap();
        assert_eq!(plain.lines.len(), 2);
        assert_eq!(plain.future.latest, Some(date_of(day(40))));
        assert_eq!(
            plain.future.warning().unwrap(),
            "2 lines dated after today (the latest 2027-01-16) left out: check the dates"
        );
        let mut asked = log(&days);
        let as_of = date_of(day(30));
        asked.leave_out_future(today, Some(as_of)).unwrap();
        assert_eq!(asked.lines.len(), 3);
        assert!(asked
            .future
            .warning()
            .unwrap()
            .starts_with("1 line dated after 2027-01-06, the date asked for"));
        // An earlier as-of changes nothing here (its own rule drops later lines).
        let mut earlier = log(&days);
        earlier
            .leave_out_future(today, Some(date_of(day(-10))))
            .unwrap();
        assert_eq!(earlier.lines.len(), 2);
        let e = log(&[day(5), day(9)])
            .leave_out_future(today, None)
            .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("every line of the log is dated after today (2 lines"));
        let mut clean = log(&[day(0)]);
        clean.leave_out_future(today, None).unwrap();
        assert_eq!(clean.future, FutureLines::default());
    }

    #[test]
    fn dates_and_timestamps_parse_to_their_calendar_day() {
        let d = parse_day("2024-03-01").unwrap();
        assert_eq!(date_of(d), NaiveDate::from_ymd_opt(2024, 3, 1).unwrap());
        for t in [
            "2024-03-01T23:59:00Z",
            "2024-03-01T10:00:00+05:00",
            "2024-03-01 10:15:00",
            "2024-03-01T10:15:00.250",
        ] {
            assert_eq!(parse_day(t), Some(d), "{t}");
        }
        for bad in ["", "yesterday", "2024-13-01", "01/03/2024"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        assert_eq!(parse_day("2024/03/01"), Some(d));
        assert_eq!(parse_day_as("01.03.2024", "%d.%m.%Y"), Some(d));
        assert_eq!(parse_day_as("03/01/2024 10:15", "%m/%d/%Y %H:%M"), Some(d));
        assert!(check_date_format("%d/%m/%Y").is_ok());
        assert!(check_date_format("%Q").is_err());
    }

    #[test]
    fn examples_of_older_files_still_read() {
        let old: BadRows = serde_json::from_str(
            r#"{"total": 2, "by_problem": {"bad_date": 2}, "examples": [[7, "bad_date"], [9, "bad_date"]]}"#,
        )
        .unwrap();
        assert_eq!(old.examples[1].row, 9);
        assert_eq!(
            old.summary(true),
            "2 with an unreadable date (e.g. row 7, column \"\")"
        );
        // A date cell with multi-byte characters gets no hint and no panic.
        assert!(!looks_like_other_date("2024-01-0x"));
        assert!(looks_like_other_date("5 févr. 2024"));
        assert!(!looks_like_other_date("é"));
    }

    #[test]
    fn numeric_dates_keep_both_orders_open() {
        assert_eq!(numeric_date("25/03/2024"), Some((25, 3, 2024, '/')));
        assert_eq!(numeric_date("3.25.2024 10:00"), Some((3, 25, 2024, '.')));
        assert_eq!(numeric_date("2024-03-01"), None);
        assert_eq!(numeric_date("1/3/24"), None);
        assert_eq!(DateOrder::DayFirst.date(31, 2, 2024), None);
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
