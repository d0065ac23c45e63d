//! The `segmenta` command line: thin wrappers over the library.

/// `println!` that returns a closed stdout as an error (`?`) instead of
/// panicking, for the commands that keep SIGPIPE ignored for their sockets
/// (`client`, `bench`): `segmenta client … | head` would otherwise panic.
/// The error is marked [`StdoutClosed`], and `main` ends such a run
/// quietly, as other tools end.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::cli::stdout_failed)?
    }};
}

mod assign;
mod bench;
mod client;
mod clv;
mod keys;
mod kmeans;
mod output;
mod pca;
mod segment;
mod serve;
mod uplift;

/// Creates (or truncates) `path` for a table of customers' data: a new
/// file is readable by its owner only (0600 on Unix).
pub fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// What a failed write to stdout carries when the reader went away (a
/// broken pipe): told apart from a socket's broken pipe, which is an error
/// to report, never a quiet end.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Marks a write error on stdout that is a closed pipe as [`StdoutClosed`].
pub fn stdout_failed(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

/// Stdout for a `csv::Writer` in the socket-holding commands: its write
/// errors are marked as [`stdout_failed`] marks them.
pub struct MarkedStdout;

impl std::io::Write for MarkedStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf).map_err(stdout_failed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush().map_err(stdout_failed)
    }
}

/// A `csv::Error` with its io error kept findable: csv's own error type
/// names no `source`, so a closed stdout inside it would read as a failure.
pub fn csv_error(e: csv::Error) -> anyhow::Error {
    if e.is_io_error() {
        if let csv::ErrorKind::Io(io) = e.into_kind() {
            return io.into();
        }
        unreachable!("is_io_error");
    }
    e.into()
}

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use segmenta::backend::BackendChoice;
use segmenta::data::{Delimiter, TextFormat};
use segmenta::segmentation::transactions::TransactionColumns;
use segmenta::segmentation::SegmentationError;

#[derive(Debug, Parser)]
#[command(
    name = "segmenta",
    version,
    about = "Customer segmentation: k-means and PCA on the GPU or CPU"
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a retail transaction log with planted groups and segment it.
    Demo(segment::DemoArgs),
    /// Segment customers from a transaction log: RFM, k-means, profiles, report.
    Segment(segment::SegmentArgs),
    /// Lifetime value, churn risk and value tiers from a transaction log
    /// (BG/NBD and Gamma-Gamma).
    Clv(clv::ClvArgs),
    /// Campaign uplift per segment: treated against control (groups from
    /// segment --holdout-share).
    Uplift(uplift::UpliftArgs),
    /// Cluster the rows of a CSV or Parquet file with k-means.
    Kmeans(kmeans::KmeansArgs),
    /// Principal component analysis of a CSV or Parquet file.
    Pca(pca::PcaArgs),
    /// Assign rows to the clusters of a saved model (no server needed).
    Assign(assign::AssignArgs),
    /// Score customers from a transaction log against a segment run's model.
    Score(assign::ScoreArgs),
    /// Time Lloyd iterations on synthetic data (optionally against scikit-learn).
    Bench(bench::BenchArgs),
    /// Run the gRPC server.
    Serve(serve::ServeArgs),
    /// Talk to a running server.
    Client(client::ClientArgs),
    /// Create API keys for `serve --auth-keys`.
    Keys(keys::KeysArgs),
}

/// How a text file writes its fields (CSV, TSV, TXT).
#[derive(Debug, Clone, Args)]
pub struct TextArgs {
    /// Field separator: , ; tab or | (default: sniffed from the header line).
    #[arg(long, value_name = "SEP", value_parser = parse_delimiter)]
    pub delimiter: Option<Delimiter>,
    /// Numbers are written 12,50 and 1.234,50 (currency symbols, spaces and
    /// thousands separators are read either way).
    #[arg(long)]
    pub decimal_comma: bool,
}

impl TextArgs {
    pub fn format(&self, date_format: Option<String>) -> TextFormat {
        TextFormat {
            delimiter: self.delimiter,
            decimal_comma: self.decimal_comma,
            date_format,
        }
    }
}

/// Where a transaction log keeps what, and how its text is written: the
/// options of every command that reads a log (`segment`, `score`,
/// `client segment`).
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Customer ids (any text).
    #[arg(long, value_parser = column_name, default_value = "customer_id")]
    pub customer_col: String,
    /// Purchase dates: ISO 8601 dates or timestamps, DD/MM/YYYY or
    /// MM/DD/YYYY (detected), or any --date-format.
    #[arg(long, value_parser = column_name, default_value = "date")]
    pub date_col: String,
    /// Spend per line (a unit price when --quantity-col is given);
    /// negative amounts are refunds.
    #[arg(long, value_parser = column_name, default_value = "amount")]
    pub amount_col: String,
    /// When given, a line's spend is amount × quantity.
    #[arg(long, value_parser = column_name)]
    pub quantity_col: Option<String>,
    /// Frequency counts distinct orders (default: distinct purchase days).
    /// Not for `clv`, whose models count purchase days.
    #[arg(long, value_parser = column_name)]
    pub order_col: Option<String>,
    /// strftime format of the date column, e.g. %d/%m/%Y or "%m/%d/%Y %H:%M"
    /// (default: ISO 8601; day-first or month-first dates are detected when
    /// a day above 12 settles which).
    #[arg(long, value_name = "FORMAT")]
    pub date_format: Option<String>,
    #[command(flatten)]
    pub text: TextArgs,
}

impl LogArgs {
    pub fn columns(&self) -> TransactionColumns {
        TransactionColumns {
            customer: self.customer_col.clone(),
            date: self.date_col.clone(),
            amount: self.amount_col.clone(),
            quantity: self.quantity_col.clone(),
            order: self.order_col.clone(),
        }
    }

    pub fn format(&self) -> TextFormat {
        self.text.format(self.date_format.clone())
    }

    /// Refuses `--order-col` where nothing reads it: the value models count
    /// purchase days, as the BG/NBD paper does.
    pub fn refuse_order_col(&self) -> anyhow::Result<()> {
        if self.order_col.is_some() {
            anyhow::bail!(
                "--order-col is not used by clv: {}; leave it out",
                segmenta::value::COUNTS_PURCHASE_DAYS
            );
        }
        Ok(())
    }
}

/// `--as-of YYYY-MM-DD`.
pub fn parse_as_of(text: Option<&str>) -> Result<Option<chrono::NaiveDate>, SegmentationError> {
    text.map(|d| {
        chrono::NaiveDate::parse_from_str(d.trim(), "%Y-%m-%d")
            .map_err(|_| SegmentationError::BadDate(d.to_owned()))
    })
    .transpose()
}

fn parse_delimiter(s: &str) -> Result<Delimiter, String> {
    s.parse()
}

/// One name of a comma-separated column list: trimmed, as the readers trim
/// header names, and never empty.
pub(crate) fn column_name(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Err("an empty column name (two commas in a row, or one at an end?)".into()),
        name => Ok(name.to_owned()),
    }
}

/// Options shared by the commands that read a table.
#[derive(Debug, Args)]
pub struct InputArgs {
    /// CSV/TSV (with a header row) or Parquet file.
    #[arg(long)]
    pub input: PathBuf,
    /// Columns to use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = column_name)]
    pub columns: Vec<String>,
    #[command(flatten)]
    pub text: TextArgs,
    /// auto: a hardware GPU if present, else the CPU. gpu: any GPU adapter
    /// (software drivers included). cpu: native CPU kernels.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "SEGMENTA_BACKEND")]
    pub backend: BackendChoice,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        // A keys-file reload is the operator's own act: confirmed even here.
        0 => "warn,segmenta::keys=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs collected from a service
        // stay plain text for grep and log shippers.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => segment::run_demo(args),
        Command::Segment(args) => segment::run_segment(args),
        Command::Clv(args) => clv::run(args),
        Command::Uplift(args) => uplift::run(args),
        Command::Kmeans(args) => kmeans::run(args),
        Command::Pca(args) => pca::run(args),
        Command::Assign(args) => assign::run_assign(args),
        Command::Score(args) => assign::run_score(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Client(args) => client::run(args),
        Command::Keys(args) => keys::run(args),
    }
}
