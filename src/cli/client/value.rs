//! `client clv` and `client uplift`: the value job and a campaign's uplift
//! on a server, printed and written as `segmenta clv` and `segmenta
//! uplift` print and write them locally.

use std::path::PathBuf;

use clap::Args;
use segmenta::experiment::report::write_uplift;
use segmenta::experiment::{read_outcomes, UpliftReport};
use segmenta::service::proto as pb;

use super::segment::{
    download_all, proto_columns, proto_value, resolve_log, say_downloaded, LogRef, LogSourceArgs,
};
use super::{proto_text_format, watch, Conn};
use crate::cli::LogArgs;

#[derive(Debug, Args)]
pub struct ClientClvArgs {
    #[command(flatten)]
    source: LogSourceArgs,
    /// The models are fitted on purchases up to this date (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    calibration_end: String,
    /// Check the predictions against the purchases up to this date.
    #[arg(long, value_name = "DATE")]
    holdout_end: Option<String>,
    #[command(flatten)]
    value: crate::cli::clv::ValueArgs,
    /// Download clv.html, its charts, the customer tables and clv.json
    /// into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
    /// Stop at the first unreadable row instead of skipping.
    #[arg(long)]
    reject_bad_rows: bool,
    /// Largest fraction of unreadable rows (0–1) before the job fails.
    #[arg(long, value_name = "FRACTION")]
    max_bad_rows: Option<f64>,
    /// Print the run's summary (clv.json) as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn clv(channel: Conn, a: ClientClvArgs) -> anyhow::Result<()> {
    use pb::clv_request::Source;
    a.log.refuse_order_col()?;
    let text = proto_text_format(&a.log.format());
    let log = resolve_log(&channel, &a.source, text.clone()).await?;
    let source = match &log {
        LogRef::Id(id) | LogRef::Uploaded(id) => Source::TransactionsId(id.clone()),
        LogRef::Path(p) => Source::TransactionsPath(p.clone()),
    };
    let request = pb::ClvRequest {
        source: Some(source),
        columns: Some(proto_columns(&a.log)),
        calibration_end: a.calibration_end,
        holdout_end: a.holdout_end.unwrap_or_default(),
        value: Some(proto_value(&a.value.options())),
        bad_rows: if a.reject_bad_rows {
            pb::BadRowPolicy::Reject
        } else {
            pb::BadRowPolicy::Skip
        } as i32,
        max_bad_rows: a.max_bad_rows,
        text_format: text,
    };
    let mut client = pb::segmentations_client::SegmentationsClient::new(channel.clone());
    let ran: anyhow::Result<_> = async {
        let job = client.clone().clv(request).await?.into_inner();
        let finished = if a.json {
            super::wait_quietly(channel.clone(), &job.id).await?
        } else {
            watch(channel.clone(), &job.id).await?
        };
        Ok((job, finished))
    }
    .await;
    let (job, finished) = log.forget_on_failure(&channel, ran).await?;
    let Some(pb::job::Result::Clv(run)) = finished.result else {
        anyhow::bail!("job {} finished without a CLV run", job.id);
    };
    // The summary the CLI prints, from the run's own clv.json.
    let summary = {
        let dir = tempfile::TempDir::new()?;
        download_all(&mut client, &run.id, &["clv.json".to_string()], dir.path()).await?;
        std::fs::read(dir.path().join("clv.json"))?
    };
    if let Some(dir) = &a.out {
        download_all(&mut client, &run.id, &run.artifacts, dir).await?;
    }
    let parsed: segmenta::value::ClvSummary = serde_json::from_slice(&summary)?;
    if a.json {
        crate::cli::clv::print_warnings(&parsed);
        let mut v: serde_json::Value = serde_json::from_slice(&summary)?;
        v["id"] = serde_json::json!(run.id);
        say!("{v}");
        return Ok(());
    }
    crate::cli::clv::print_summary(&parsed)?;
    if let Some(dir) = &a.out {
        say_downloaded(&run.artifacts, dir, "clv.html")?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ClientUpliftArgs {
    /// The segmentation whose groups the campaign used (seg-…, made with
    /// --holdout-share).
    #[arg(long)]
    segmentation: String,
    /// The campaign's outcomes, CSV: customer_id, converted (0/1), revenue.
    /// Read here and streamed; the server stores none of it.
    #[arg(long)]
    outcomes: PathBuf,
    /// Where uplift.html, uplift.png and uplift.json go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Revenue is written 12,50 and 1.234,50 (as `segmenta uplift`).
    #[arg(long)]
    decimal_comma: bool,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Bytes of outcomes per message (an id, a flag and a double each, with
/// their tags), or fewer where the server's message limit is lower.
const BLOCK_BYTES: usize = 1 << 20;

pub async fn uplift(channel: Conn, a: ClientUpliftArgs) -> anyhow::Result<()> {
    use pb::uplift_request::Message;
    let mut block = pb::OutcomeBlock::default();
    let mut messages = vec![pb::UpliftRequest {
        message: Some(Message::Header(pb::UpliftHeader {
            segmentation_id: a.segmentation.clone(),
        })),
    }];
    let mut bytes = 0;
    let block_bytes = BLOCK_BYTES.min(super::message_budget(channel.clone()).await.0);
    read_outcomes(&a.outcomes, a.decimal_comma, |_, id, converted, revenue| {
        let size = id.len() + 16;
        if bytes + size > block_bytes && !block.customer_ids.is_empty() {
            messages.push(pb::UpliftRequest {
                message: Some(Message::Outcomes(std::mem::take(&mut block))),
            });
            bytes = 0;
        }
        bytes += size;
        block.customer_ids.push(id.to_owned());
        block.converted.push(converted);
        block.revenue.push(revenue);
        Ok(())
    })?;
    if !block.customer_ids.is_empty() {
        messages.push(pb::UpliftRequest {
            message: Some(Message::Outcomes(block)),
        });
    }
    let answer = pb::segmentations_client::SegmentationsClient::new(channel)
        .uplift(tokio_stream::iter(messages))
        .await?
        .into_inner();
    let report = UpliftReport::from(&answer);
    let files = a
        .out
        .as_deref()
        .map(|dir| write_uplift(&report, dir))
        .transpose()?;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["files"] = serde_json::json!(files);
        say!("{v}");
        return Ok(());
    }
    crate::cli::uplift::print_report(&report)?;
    if let Some(f) = files {
        say!("report: {}", f.html.display());
    }
    Ok(())
}
