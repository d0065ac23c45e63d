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
use crate::data::{resolve_columns, DataError, TableFormat};
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

/// The skipped rows of a load, by problem.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BadRows {
    pub total: usize,
    pub by_problem: BTreeMap<RowProblem, usize>,
    /// The first few skipped rows (1-based, header excluded), for a look.
    pub examples: Vec<(usize, RowProblem)>,
}

const EXAMPLES: usize = 10;

impl BadRows {
    fn record(&mut self, row: usize, problem: RowProblem) {
        self.total += 1;
        *self.by_problem.entry(problem.clone()).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push((row, problem));
        }
    }
}

/// A parsed transaction log.
#[derive(Debug, Clone, Default)]
pub struct TransactionLog {
    /// Customer ids in order of first appearance; `Line::customer` indexes it.
    pub customer_ids: Vec<String>,
    pub lines: Vec<Line>,
    pub rows_read: usize,
    pub bad_rows: BadRows,
}

/// Parses a date or timestamp as written (its calendar date, time zones not
/// converted), as days since 1970-01-01.
pub fn parse_day(text: &str) -> Option<i32> {
    let text = text.trim();
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
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
    // Years outside 1900–9998 are typos or sentinels (9999-12-31), not
    // purchases; the as-of date must also fit after the latest one.
    if !(1900..=9998).contains(&chrono::Datelike::year(&date)) {
        return None;
    }
    Some(day_number(date))
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
    policy: BadRowPolicy,
    customers: HashMap<String, u32>,
    orders: HashMap<String, u32>,
    log: TransactionLog,
}

/// One row's fields as text, in the order customer, date, amount, quantity, order.
type Fields<'r> = [Option<&'r str>; 5];

impl<'a> Builder<'a> {
    fn new(columns: &'a TransactionColumns, policy: BadRowPolicy) -> Self {
        Self {
            columns,
            policy,
            customers: HashMap::new(),
            orders: HashMap::new(),
            log: TransactionLog::default(),
        }
    }

    fn push(&mut self, fields: Fields) -> Result<()> {
        self.log.rows_read += 1;
        let row = self.log.rows_read;
        match self.parse(fields) {
            Ok(line) => self.log.lines.push(line),
            Err((problem, column, value)) => match self.policy {
                BadRowPolicy::Skip => self.log.bad_rows.record(row, problem),
                BadRowPolicy::Reject => {
                    return Err(SegmentationError::BadRow {
                        row,
                        problem,
                        column: column.to_owned(),
                        value: value.to_owned(),
                    }
                    .into())
                }
            },
        }
        Ok(())
    }

    fn parse<'r>(
        &mut self,
        f: Fields<'r>,
    ) -> std::result::Result<Line, (RowProblem, &'a str, &'r str)>
    where
        'a: 'r,
    {
        let c = self.columns;
        let id = f[0].map(str::trim).unwrap_or("");
        if id.is_empty() {
            return Err((RowProblem::MissingCustomerId, &c.customer, id));
        }
        let date = f[1].unwrap_or("");
        let day = parse_day(date).ok_or((RowProblem::BadDate, c.date.as_str(), date))?;
        let amount = f[2].unwrap_or("");
        let mut spend =
            parse_number(amount).ok_or((RowProblem::BadAmount, c.amount.as_str(), amount))?;
        if let Some(name) = &c.quantity {
            let q = f[3].unwrap_or("");
            spend *= parse_number(q).ok_or((RowProblem::BadQuantity, name.as_str(), q))?;
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

    fn finish(mut self) -> TransactionLog {
        let mut ids = vec![String::new(); self.customers.len()];
        for (id, i) in self.customers {
            ids[i as usize] = id;
        }
        self.log.customer_ids = ids;
        self.log
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

fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Reads a transaction log. Bad rows are skipped and counted, or rejected,
/// as `policy` says; unknown column names are an error listing the header.
pub fn read_transactions(
    path: &Path,
    columns: &TransactionColumns,
    policy: BadRowPolicy,
) -> Result<TransactionLog> {
    let format = TableFormat::from_path(path)?;
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut builder = Builder::new(columns, policy);
    match format {
        TableFormat::Csv => read_csv(file, path, &mut builder)?,
        TableFormat::Parquet => read_parquet(file, path, &mut builder)?,
    }
    Ok(builder.finish())
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

/// Positions of the five fields in `header` (`None` for optional ones not used).
fn positions(header: &[String], columns: &TransactionColumns) -> Result<Vec<Option<usize>>> {
    wanted(columns)
        .into_iter()
        .map(|name| match name {
            Some(name) => Ok(Some(resolve_columns(header, &[name])?[0])),
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
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| malformed(path, e))?
        .iter()
        .map(str::to_owned)
        .collect();
    let at = positions(&header, builder.columns)?;
    let mut record = csv::StringRecord::new();
    while reader
        .read_record(&mut record)
        .map_err(|e| malformed(path, e))?
    {
        let fields: Fields = std::array::from_fn(|i| at[i].map(|c| record.get(c).unwrap_or("")));
        builder.push(fields)?;
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
        .map(|f| f.name().clone())
        .collect();
    let at = positions(&header, builder.columns)?;
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
    }
}
