use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::output::{fmt_f, table};
use super::InputArgs;
use segmenta::backend::{select, with_cpu_fallback};
use segmenta::data::{read_table_limited, ReadLimits};
use segmenta::pca::PcaParams;

#[derive(Debug, Args)]
pub struct PcaArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Number of principal components to keep.
    #[arg(long)]
    pub n_components: usize,
    /// Scale projected components to unit variance.
    #[arg(long)]
    pub whiten: bool,
}

pub fn run(args: PcaArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data = read_table_limited(
        &args.input.input,
        &args.input.columns,
        &args.input.text.format(None),
        ReadLimits::NONE,
    )?;
    let params = PcaParams::new(args.n_components).whiten(args.whiten);
    let backend = select(args.input.backend)?;
    let model = with_cpu_fallback(args.input.backend, backend.as_ref(), |b| {
        params.fit(b, data.values.view())
    })?;
    let info = model.backend();
    if args.input.json {
        let out = json!({
            "backend": info.backend,
            "adapter": info.adapter,
            "n_components": model.n_components(),
            "n_rows": data.n_rows(),
            "columns": data.columns,
            "explained_variance": model.explained_variance(),
            "explained_variance_ratio": model.explained_variance_ratio(),
            "singular_values": model.singular_values(),
            "components": model.components().outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
            "mean": model.mean().to_vec(),
            "whiten": model.whiten(),
            "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "PCA: {} components of {} rows × {} columns, backend {} [{}]",
        model.n_components(),
        data.n_rows(),
        data.n_cols(),
        info.backend,
        info.adapter
    );
    let mut header = vec!["component".into(), "variance".into(), "ratio".into()];
    header.extend(data.columns.iter().cloned());
    let rows: Vec<Vec<String>> = model
        .components()
        .outer_iter()
        .enumerate()
        .map(|(i, comp)| {
            let mut row = vec![
                (i + 1).to_string(),
                fmt_f(model.explained_variance()[i]),
                format!("{:.4}", model.explained_variance_ratio()[i]),
            ];
            row.extend(comp.iter().map(|&v| format!("{v:.4}")));
            row
        })
        .collect();
    print!("{}", table(&header, &rows));
    Ok(())
}
