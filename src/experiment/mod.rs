//! Campaign experiments: treatment and control groups drawn per segment
//! ([`groups`], `segment --holdout-share`), and the uplift a campaign made
//! ([`uplift`], `segmenta uplift`) with a page to read it ([`report`]).

pub mod groups;
pub mod report;
pub mod uplift;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use groups::{assign_groups, Group, GroupError};
pub use uplift::{uplift, Interval, Uplift};

/// One customer's arm, conversion and revenue.
pub type Observation = (Group, bool, f64);

/// What can go wrong reading an experiment's files.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: no column {column:?} (columns: {available}){hint}", path.display())]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        available: String,
        hint: &'static str,
    },
    #[error("{}, row {row}, column {column:?}: {what}", path.display())]
    BadValue {
        path: PathBuf,
        row: usize,
        column: &'static str,
        what: &'static str,
    },
    #[error("{}: rows {row_a} and {row_b} have the same customer id", path.display())]
    DuplicateId {
        path: PathBuf,
        row_a: usize,
        row_b: usize,
    },
    #[error("{}: column {column:?} is named more than once", path.display())]
    RepeatedColumn { path: PathBuf, column: &'static str },
    /// `advice`: what to give instead.
    #[error("{}: a Parquet file; {advice}", path.display())]
    NotCsv { path: PathBuf, advice: &'static str },
    #[error("{}", no_outcomes(*unknown))]
    NoOutcomes { unknown: usize },
    #[error("fewer than two customers are in the {0} group: nothing to compare")]
    EmptyGroup(&'static str),
    #[error(transparent)]
    Groups(#[from] GroupError),
}

fn no_outcomes(unknown: usize) -> String {
    if unknown == 0 {
        "no outcome rows: nothing was measured".into()
    } else {
        format!(
            "no outcome row is for an assigned customer ({unknown} rows name customers not in \
             the assignments): nothing was measured; check that the ids are the segmentation's"
        )
    }
}

/// Uplift overall and per segment, and what did not match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpliftReport {
    pub overall: Uplift,
    pub segments: Vec<Uplift>,
    pub customers: usize,
    /// Assigned customers with no outcome row: counted as not converted,
    /// no revenue.
    pub without_outcome: usize,
    /// Outcome rows whose customer is not in the assignments (ignored).
    pub unknown_outcomes: usize,
    pub warnings: Vec<String>,
}

struct Table {
    path: PathBuf,
    reader: csv::Reader<std::io::BufReader<std::fs::File>>,
    header: Vec<String>,
}

impl Table {
    /// Opens `path`; errors name it `shown`, and a Parquet file gets
    /// `advice`.
    fn open(path: &Path, shown: &Path, advice: &'static str) -> Result<Self, ExperimentError> {
        let io = |error| ExperimentError::Io {
            path: shown.to_owned(),
            error,
        };
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            return Err(ExperimentError::NotCsv {
                path: shown.to_owned(),
                advice,
            });
        }
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
        // Delimited as a spreadsheet in any locale saves it: sniffed from
        // the header as transaction logs are (a BOM skipped).
        let delimiter = crate::data::text::prepare(&mut file, None).map_err(io)?;
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .delimiter(delimiter.byte())
            .from_reader(file);
        let header = reader
            .headers()
            .map_err(|e| io(std::io::Error::other(e)))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_string())
            .collect();
        Ok(Self {
            path: shown.to_owned(),
            reader,
            header,
        })
    }

    fn column(&self, name: &'static str, hint: &'static str) -> Result<usize, ExperimentError> {
        if self.header.iter().filter(|h| *h == name).count() > 1 {
            return Err(ExperimentError::RepeatedColumn {
                path: self.path.clone(),
                column: name,
            });
        }
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| ExperimentError::MissingColumn {
                path: self.path.clone(),
                column: name,
                available: crate::data::shown_names(&self.header),
                hint,
            })
    }

    fn rows(
        &mut self,
    ) -> impl Iterator<Item = (usize, Result<csv::StringRecord, ExperimentError>)> + '_ {
        let path = self.path.clone();
        self.reader.records().enumerate().map(move |(i, r)| {
            (
                i + 1,
                r.map_err(|e| ExperimentError::Io {
                    path: path.clone(),
                    error: std::io::Error::other(e),
                }),
            )
        })
    }
}

/// An experiment's customers: id, segment and group, from `segment`'s
/// customer table (`customer_id`, `segment`, `group`).
pub struct Assignments {
    customers: Vec<(String, String, Group)>,
    index: HashMap<String, usize>,
}

impl Assignments {
    /// Reads the table at `path`.
    pub fn read(path: &Path) -> Result<Self, ExperimentError> {
        Self::read_as(path, path)
    }

    /// Reads the table at `path`; errors name it `shown` (a service does
    /// not show its own paths).
    pub fn read_as(path: &Path, shown: &Path) -> Result<Self, ExperimentError> {
        let mut a = Table::open(
            path,
            shown,
            "give the CSV customer table (customers.csv from the same run)",
        )?;
        let id_col = a.column("customer_id", "")?;
        let seg_col = a.column("segment", "")?;
        let group_col = a.column(
            "group",
            "; draw groups with segment --holdout-share before the campaign",
        )?;
        let mut customers: Vec<(String, String, Group)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (row, record) in a.rows() {
            let r = record?;
            let id = r.get(id_col).unwrap_or("").to_string();
            if id.is_empty() {
                return Err(bad(shown, row, "customer_id", "empty"));
            }
            let group = Group::parse(r.get(group_col).unwrap_or(""))
                .ok_or_else(|| bad(shown, row, "group", "expected treatment or control"))?;
            if let Some(&first) = index.get(&id) {
                return Err(ExperimentError::DuplicateId {
                    path: shown.to_owned(),
                    row_a: first + 1,
                    row_b: row,
                });
            }
            index.insert(id.clone(), customers.len());
            customers.push((id, r.get(seg_col).unwrap_or("").to_string(), group));
        }
        Ok(Self { customers, index })
    }

    pub fn len(&self) -> usize {
        self.customers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.customers.is_empty()
    }
}

fn bad(path: &Path, row: usize, column: &'static str, what: &'static str) -> ExperimentError {
    ExperimentError::BadValue {
        path: path.to_owned(),
        row,
        column,
        what,
    }
}

/// The largest revenue one outcome may carry.
pub const MAX_REVENUE: f64 = 1e15;

/// A campaign's outcomes, recorded row by row against the assignments: at
/// most one per customer, memory in proportion to the assignments only.
pub struct Outcomes<'a> {
    assignments: &'a Assignments,
    /// What the outcome rows are called in errors.
    source: PathBuf,
    outcome: Vec<Option<(bool, f64)>>,
    row: Vec<usize>,
    unknown: usize,
}

impl<'a> Outcomes<'a> {
    pub fn new(assignments: &'a Assignments, source: &Path) -> Self {
        Self {
            assignments,
            source: source.to_owned(),
            outcome: vec![None; assignments.len()],
            row: vec![0; assignments.len()],
            unknown: 0,
        }
    }

    /// Records row `row` (1-based): a customer converted or not, with this
    /// revenue. A second row for one customer, or a non-finite revenue, is
    /// an error naming the rows; an id not in the assignments is counted.
    pub fn record(
        &mut self,
        row: usize,
        id: &str,
        converted: bool,
        revenue: f64,
    ) -> Result<(), ExperimentError> {
        // Revenues are added up per arm: beyond this, sums and variances
        // would leave the floats.
        if !(revenue.is_finite() && revenue.abs() <= MAX_REVENUE) {
            return Err(bad(
                &self.source,
                row,
                "revenue",
                "not a finite number of at most 1e15 in size",
            ));
        }
        match self.assignments.index.get(id) {
            Some(&i) if self.outcome[i].is_some() => Err(ExperimentError::DuplicateId {
                path: self.source.clone(),
                row_a: self.row[i],
                row_b: row,
            }),
            Some(&i) => {
                self.outcome[i] = Some((converted, revenue));
                self.row[i] = row;
                Ok(())
            }
            None => {
                self.unknown += 1;
                Ok(())
            }
        }
    }

    /// The uplift overall and per segment.
    pub fn finish(self) -> Result<UpliftReport, ExperimentError> {
        // Without a single row for an assigned customer, every customer
        // would count as not converted and the table would be all zeros.
        if self.outcome.iter().all(Option::is_none) {
            return Err(ExperimentError::NoOutcomes {
                unknown: self.unknown,
            });
        }
        report(&self.assignments.customers, &self.outcome, self.unknown)
    }
}

/// Reads `segment`'s customer table (`customer_id`, `segment`, `group`)
/// and an outcomes table (`customer_id`, `converted` 0/1, `revenue`), and
/// measures the uplift overall and per segment.
pub fn measure(
    assignments: &Path,
    outcomes: &Path,
    decimal_comma: bool,
) -> Result<UpliftReport, ExperimentError> {
    let a = Assignments::read(assignments)?;
    let mut recorded = Outcomes::new(&a, outcomes);
    read_outcomes(outcomes, decimal_comma, |row, id, converted, revenue| {
        recorded.record(row, id, converted, revenue)
    })?;
    recorded.finish()
}

/// Reads an outcomes table (`customer_id`, `converted` 0/1 or true/false,
/// `revenue`, empty meaning 0; revenue written `12,50` with
/// `decimal_comma`) and hands each row, numbered from 1, to `each`.
pub fn read_outcomes(
    path: &Path,
    decimal_comma: bool,
    mut each: impl FnMut(usize, &str, bool, f64) -> Result<(), ExperimentError>,
) -> Result<(), ExperimentError> {
    let mut o = Table::open(path, path, "save the outcomes as CSV")?;
    let (oid, conv, rev) = (
        o.column("customer_id", "")?,
        o.column("converted", "")?,
        o.column("revenue", "")?,
    );
    for (row, record) in o.rows() {
        let r = record?;
        // A table written where some cells were missing holds 1.0 and 0.0.
        let converted = match r.get(conv).unwrap_or("") {
            "1" | "1.0" | "true" | "True" | "TRUE" => true,
            "0" | "0.0" | "false" | "False" | "FALSE" => false,
            _ => {
                return Err(bad(
                    path,
                    row,
                    "converted",
                    "expected 0 or 1 (or true/false)",
                ))
            }
        };
        // Read as transaction amounts are: "$12.50" and "12.50 EUR" too.
        let revenue: f64 = match r.get(rev).unwrap_or("") {
            "" => 0.0,
            v => crate::data::text::parse_number(v, decimal_comma)
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    let other = crate::data::text::parse_number(v, !decimal_comma).is_some();
                    let what = match (other, decimal_comma) {
                        (true, false) => "not a number (it reads with --decimal-comma)",
                        (true, true) => "not a number (it reads without --decimal-comma)",
                        (false, _) => "not a number",
                    };
                    bad(path, row, "revenue", what)
                })?,
        };
        each(row, r.get(oid).unwrap_or(""), converted, revenue)?;
    }
    Ok(())
}

fn report(
    customers: &[(String, String, Group)],
    outcome: &[Option<(bool, f64)>],
    unknown: usize,
) -> Result<UpliftReport, ExperimentError> {
    let without_outcome = outcome.iter().filter(|o| o.is_none()).count();
    let rows: Vec<Observation> = customers
        .iter()
        .zip(outcome)
        .map(|((_, _, g), o)| {
            let (c, r) = o.unwrap_or((false, 0.0));
            (*g, c, r)
        })
        .collect();
    for (g, name) in [(Group::Treatment, "treatment"), (Group::Control, "control")] {
        if rows.iter().filter(|r| r.0 == g).count() < 2 {
            return Err(ExperimentError::EmptyGroup(name));
        }
    }
    let mut by_segment: BTreeMap<(u64, String), Vec<Observation>> = BTreeMap::new();
    for (c, r) in customers.iter().zip(&rows) {
        // Numeric segment ids sort as numbers.
        let key = (c.1.parse::<u64>().unwrap_or(u64::MAX), c.1.clone());
        by_segment.entry(key).or_default().push(*r);
    }
    let overall = uplift("all", &rows);
    let mut warnings = Vec::new();
    let mut segments = Vec::new();
    for ((_, s), r) in &by_segment {
        // Every statistic needs both arms, Welch's two customers in each.
        let arms =
            [Group::Treatment, Group::Control].map(|g| r.iter().filter(|o| o.0 == g).count());
        if arms.iter().any(|&n| n < 2) {
            warnings.push(format!(
                "segment {s}: {} treated and {} control customers, too few to compare; left out (the overall figures include them)",
                arms[0], arms[1]
            ));
            continue;
        }
        segments.push(uplift(s, r));
    }
    warnings.extend(
        std::iter::once(&overall)
            .chain(&segments)
            .filter_map(|u| u.warning.clone()),
    );
    if without_outcome > 0 {
        warnings.push(format!(
            "{without_outcome} assigned customers have no outcome row: counted as not converted, no revenue"
        ));
    }
    if unknown > 0 {
        warnings.push(format!(
            "{unknown} outcome rows name customers not in the assignments: ignored"
        ));
    }
    Ok(UpliftReport {
        overall,
        segments,
        customers: customers.len(),
        without_outcome,
        unknown_outcomes: unknown,
        warnings,
    })
}
