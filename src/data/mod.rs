//! Loading tables into an `n × d` row-major f32 matrix, validating them, and
//! scaling features.

mod error;
mod matrix;
mod reader;
mod scaler;

pub use error::DataError;
pub use matrix::{check_finite, Dataset};
pub use reader::{read_table, read_table_limited, resolve_columns, ReadLimits, TableFormat};
pub use scaler::{ColumnStats, Scaler};
