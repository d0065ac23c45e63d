//! Erasure of one customer (GDPR Art. 17, CCPA): every stored file that can
//! hold a customer id is rewritten without that customer, atomically (a
//! crash leaves the old file or the new, never a half-erased one).
//!
//! A transaction-log line, or an output row, goes when any of its fields
//! equals the id exactly: the log's customer column is only known to the
//! segment jobs that read it, and a rule that looks at every column cannot
//! miss the one that matters. Datasets hold numbers only, and models hold
//! centroids, so neither can name a customer.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use super::Engine;
use crate::data::{Delimiter, TableFormat};
use crate::segmentation::SegmentModel;
use crate::service::error::{ServiceError, ServiceResult};
use crate::service::storage::{replace_file_with, write_bytes_atomically};

/// One object the erasure changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    /// `transaction_log`, `segmentation` or `job`.
    pub kind: &'static str,
    pub id: String,
    /// Lines or rows removed from it.
    pub rows_removed: u64,
}

/// What an erasure did, and the stored files it could not read.
#[derive(Debug, Default)]
pub struct Erasure {
    pub changed: Vec<Erased>,
    /// Logs and outputs whose content could not be parsed (damaged): the
    /// customer may still be in them.
    pub unreadable: Vec<String>,
}

/// The column the service's own customer tables name customers in: only it
/// is matched there, so erasing customer "3" leaves segment 3 alone.
const OUTPUT_ID_COLUMN: &str = "customer_id";

impl Engine {
    /// Removes `customer_id` from every transaction log, segmentation or
    /// CLV output and job record, going on past files it cannot parse. The
    /// caller holds the commit lock ([`Engine::erase_customer`]).
    pub(super) fn erase_customer_unlocked(&self, customer_id: &str) -> ServiceResult<Erasure> {
        if customer_id.is_empty() {
            return Err(ServiceError::invalid(
                "customer_id",
                "a customer id is needed",
            ));
        }
        // Any id a log can hold, tabs and newlines too: only the length is
        // bounded. (The id is never logged.)
        let max = self.config.limits.max_name_bytes;
        if customer_id.len() > max {
            return Err(ServiceError::invalid(
                "customer_id",
                format!("an id of {} bytes; the limit is {max}", customer_id.len()),
            ));
        }
        let mut out = Erasure::default();
        for log in self.store.list_transactions()? {
            let path = self.store.transactions_path(&log.id)?;
            // An uploaded log's customer column is the jobs' business: any
            // field equal to the id counts.
            let removed = match log.format {
                TableFormat::Csv => {
                    // Split as the upload said (sniffed when it said
                    // nothing, as its jobs then read it), and as every job
                    // that succeeded reading it with another delimiter did.
                    let mut ways = vec![log.text_format.delimiter];
                    for d in &log.read_delimiters {
                        if !ways.contains(&Some(*d)) {
                            ways.push(Some(*d));
                        }
                    }
                    ways.into_iter().try_fold(0, |sum, d| {
                        Ok::<_, ServiceError>(sum + erase_csv(&path, customer_id, d, None)?)
                    })
                }
                TableFormat::Parquet => erase_parquet_guarded(&path, customer_id, None),
            };
            match readable(removed, &log.id, &mut out.unreadable)? {
                0 => {}
                removed => out.changed.push(Erased {
                    kind: "transaction_log",
                    id: log.id,
                    rows_removed: removed,
                }),
            }
        }
        let id_column = Some(OUTPUT_ID_COLUMN);
        for seg in self.store.list_segmentations()? {
            let dir = self.store.segmentation_path(&seg.id)?;
            // The customer's rows: each table holds them once, so the most
            // any one file lost (not the sum over the copies).
            let mut removed = 0;
            for name in &seg.artifacts {
                let path = dir.join(name);
                let erased = match name.as_str() {
                    "customers.csv" => {
                        erase_csv(&path, customer_id, Some(Delimiter::Comma), id_column)
                    }
                    "customers.parquet" => erase_parquet_guarded(&path, customer_id, id_column),
                    "model.json" => erase_model(&path, customer_id),
                    // Reports, charts, segments.json and clv.json hold
                    // aggregates only.
                    _ => Ok(0),
                };
                let label = format!("{}/{name}", seg.id);
                removed = removed.max(readable(erased, &label, &mut out.unreadable)?);
            }
            if removed > 0 {
                out.changed.push(Erased {
                    kind: if seg.id.starts_with("clv-") {
                        "clv_run"
                    } else {
                        "segmentation"
                    },
                    id: seg.id,
                    rows_removed: removed,
                });
            }
        }
        for job in self.jobs.scrub(customer_id) {
            out.changed.push(Erased {
                kind: "job",
                id: job,
                rows_removed: 0,
            });
        }
        self.store.recount();
        Ok(out)
    }
}

/// A file's erasure: rows removed, or 0 with `label` noted when its content
/// cannot be parsed. Any other failure (the disk) stops the erasure.
fn readable(
    r: ServiceResult<u64>,
    label: &str,
    unreadable: &mut Vec<String>,
) -> ServiceResult<u64> {
    match r {
        Err(ServiceError::Internal(m)) if m.starts_with(UNPARSABLE) => {
            unreadable.push(label.to_owned());
            Ok(0)
        }
        other => other,
    }
}

/// The start of every error about a file's content (never its storage).
const UNPARSABLE: &str = "erasure: ";

/// A file whose content cannot be parsed (see [`readable`]).
fn storage(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(format!("{UNPARSABLE}{e}"))
}

/// Rewrites a text table without the records that have a field equal to
/// `id` (the header is kept); returns how many went. The delimiter is the
/// one given (as uploaded) or sniffed, as the readers do. Every other byte
/// is copied as it was (byte-order mark, quoting, line ends), so the log
/// reads exactly as before, less that customer.
fn erase_csv(
    path: &Path,
    id: &str,
    delimiter: Option<Delimiter>,
    column: Option<&str>,
) -> ServiceResult<u64> {
    // With `column`, only that field of each record (found in the header)
    // is compared; a table without it holds no such customer.
    let mut at: Option<Option<usize>> = None;
    let matches = |r: &csv::ByteRecord, at: &Option<Option<usize>>| match at {
        Some(Some(i)) => r.get(*i).is_some_and(|f| f.trim_ascii() == id.as_bytes()),
        Some(None) => false,
        None => r.iter().any(|f| f.trim_ascii() == id.as_bytes()),
    };
    let locate = |header: &csv::ByteRecord| {
        column.map(|c| {
            header.iter().position(|f| {
                let f = f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f);
                f.trim_ascii() == c.as_bytes()
            })
        })
    };
    let mut file = BufReader::new(File::open(path).map_err(ServiceError::io)?);
    let bom = std::io::BufRead::fill_buf(&mut file)
        .map_err(ServiceError::io)?
        .starts_with(b"\xEF\xBB\xBF");
    // Offsets below count from after the mark `prepare` skips.
    let base = if bom { 3 } else { 0 };
    let d = crate::data::text::prepare(&mut file, delimiter).map_err(ServiceError::io)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(d.byte())
        .from_reader(file);
    // A first pass finds the byte ranges of the records to drop, so
    // untouched files are never rewritten.
    let mut drop: Vec<std::ops::Range<u64>> = Vec::new();
    let mut hits = 0u64;
    let mut record = csv::ByteRecord::new();
    let mut first = true;
    loop {
        let from = reader.position().byte();
        if !reader.read_byte_record(&mut record).map_err(storage)? {
            break;
        }
        if std::mem::take(&mut first) {
            at = locate(&record);
        } else if matches(&record, &at) {
            hits += 1;
            let to = reader.position().byte();
            match drop.last_mut() {
                Some(last) if last.end == base + from => last.end = base + to,
                _ => drop.push(base + from..base + to),
            }
        }
    }
    if hits == 0 {
        return Ok(0);
    }
    // The csv reader ends a CRLF record after its \r and starts the next
    // at the \n: a range that starts at that \n moves one byte on (and
    // takes its own \n), so the lines kept keep their CRLF — the last one
    // too when the file has no final line end.
    let source = File::open(path).map_err(ServiceError::io)?;
    {
        use std::os::unix::fs::FileExt;
        let byte = |at: u64| {
            let mut b = [0u8];
            matches!(source.read_at(&mut b, at), Ok(1)).then_some(b[0])
        };
        for gone in &mut drop {
            if byte(gone.start) == Some(b'\n')
                && gone.start > 0
                && byte(gone.start - 1) == Some(b'\r')
            {
                gone.start += 1;
                if byte(gone.end) == Some(b'\n') {
                    gone.end += 1;
                }
            }
        }
    }
    replace_file_with(path, |out| {
        let mut from = &source;
        let mut kept = 0u64;
        for gone in &drop {
            std::io::copy(&mut (&mut from).take(gone.start - kept), out)?;
            from.seek(std::io::SeekFrom::Start(gone.end))?;
            kept = gone.end;
        }
        std::io::copy(&mut from, out)?;
        Ok(())
    })
    .map_err(ServiceError::io)?;
    Ok(hits)
}

/// [`erase_parquet`], a panic in the parquet crate on a damaged file
/// becoming a storage error.
fn erase_parquet_guarded(path: &Path, id: &str, column: Option<&str>) -> ServiceResult<u64> {
    crate::data::guard_parquet(
        || erase_parquet(path, id, column),
        || storage("a damaged Parquet file"),
    )
}

/// Rewrites a Parquet file without the rows that have a column (read as
/// text; only `column` when given) equal to `id`.
fn erase_parquet(path: &Path, id: &str, column: Option<&str>) -> ServiceResult<u64> {
    let read = || -> ServiceResult<_> {
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).map_err(ServiceError::io)?)
            .and_then(|b| b.build())
            .map_err(storage)
    };
    let keep_mask = |batch: &RecordBatch| -> ServiceResult<BooleanArray> {
        let mut keep = vec![true; batch.num_rows()];
        let schema = batch.schema();
        let chosen = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .filter(|(_, f)| column.is_none_or(|c| f.name() == c))
            .map(|(c, _)| c);
        for column in chosen {
            let Ok(text) = arrow_cast::cast(column, &DataType::Utf8) else {
                continue;
            };
            let text = text
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| storage("a column cast to text is not text"))?;
            for (i, k) in keep.iter_mut().enumerate() {
                if text.is_valid(i) && text.value(i).trim() == id {
                    *k = false;
                }
            }
        }
        Ok(BooleanArray::from(keep))
    };
    let mut hits = 0u64;
    let mut schema = None;
    for batch in read()? {
        let batch = batch.map_err(storage)?;
        schema.get_or_insert_with(|| batch.schema());
        let mask = keep_mask(&batch)?;
        hits += (mask.len() - mask.true_count()) as u64;
    }
    let Some(schema) = schema.filter(|_| hits > 0) else {
        return Ok(0);
    };
    let mut batches = Vec::new();
    for batch in read()? {
        let batch = batch.map_err(storage)?;
        let mask = keep_mask(&batch)?;
        batches.push(arrow_select::filter::filter_record_batch(&batch, &mask).map_err(storage)?);
    }
    replace_file_with(path, |out| {
        // Compressed, as logs are written: uncompressed, an erasure could
        // swell a stored log far past its size.
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let mut writer = ArrowWriter::try_new(out, Arc::clone(&schema), Some(props))
            .map_err(std::io::Error::other)?;
        for b in &batches {
            writer.write(b).map_err(std::io::Error::other)?;
        }
        writer.close().map_err(std::io::Error::other)?;
        Ok(())
    })
    .map_err(ServiceError::io)?;
    Ok(hits)
}

/// Removes the customer from a segmentation's `model.json` (its customer
/// list and their labels, kept for stable refreshes).
fn erase_model(path: &Path, id: &str) -> ServiceResult<u64> {
    let text = std::fs::read(path).map_err(ServiceError::io)?;
    let mut model: SegmentModel = serde_json::from_slice(&text).map_err(storage)?;
    let before = model.customer_ids.len();
    let keep: Vec<bool> = model.customer_ids.iter().map(|c| c != id).collect();
    let mut k = keep.iter();
    model
        .customer_ids
        .retain(|_| *k.next().expect("same length"));
    if model.labels.len() == keep.len() {
        let mut k = keep.iter();
        model.labels.retain(|_| *k.next().expect("same length"));
    }
    let removed = (before - model.customer_ids.len()) as u64;
    if removed > 0 {
        let text = serde_json::to_vec(&model).map_err(storage)?;
        write_bytes_atomically(path, &text).map_err(ServiceError::io)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` with customer `X` erased (the first field compared).
    fn erased(text: &str) -> String {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("log.csv");
        std::fs::write(&path, text).unwrap();
        erase_csv(&path, "X", None, Some("customer_id")).unwrap();
        String::from_utf8(std::fs::read(&path).unwrap()).unwrap()
    }

    #[test]
    fn erasure_keeps_every_other_byte_whatever_the_file_shape() {
        let h = "customer_id,amount";
        for (text, kept) in [
            // LF and CRLF, with and without a last line end.
            (format!("{h}\nA,1\nX,2\nB,3\n"), format!("{h}\nA,1\nB,3\n")),
            (format!("{h}\nA,1\nX,2"), format!("{h}\nA,1\n")),
            (
                format!("{h}\r\nA,1\r\nX,2\r\nB,3\r\n"),
                format!("{h}\r\nA,1\r\nB,3\r\n"),
            ),
            (format!("{h}\r\nA,1\r\nX,2"), format!("{h}\r\nA,1\r\n")),
            (format!("{h}\r\nX,2\r\nX,4\r\nB,3"), format!("{h}\r\nB,3")),
            // A quoted field holding a line end, a blank line (kept: not
            // the customer's), a BOM.
            (
                format!("\u{feff}{h}\nX,\"a\nb\"\n\nA,\"c\r\nd\"\n"),
                format!("\u{feff}{h}\n\nA,\"c\r\nd\"\n"),
            ),
        ] {
            assert_eq!(erased(&text), kept, "{text:?}");
        }
    }
}
