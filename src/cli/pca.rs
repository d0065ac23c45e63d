use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ndarray::Array2;
use serde_json::json;

use super::output::{fmt_f, table};
use super::{column_name, InputArgs};
use segmenta::backend::{select, with_cpu_fallback};
use segmenta::data::{read_table_limited, read_text_column, ReadLimits};
use segmenta::model_file::{ModelFile, TableModel};
use segmenta::pca::{PcaModel, PcaParams};

#[derive(Debug, Args)]
pub struct PcaArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Number of principal components to keep (when fitting).
    #[arg(long, required_unless_present = "model")]
    pub n_components: Option<usize>,
    /// Scale projected components to unit variance.
    #[arg(long)]
    pub whiten: bool,
    /// Apply this saved PCA model instead of fitting one.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["n_components", "whiten"])]
    pub model: Option<PathBuf>,
    /// Save the fitted model to this file (for `pca --model`).
    #[arg(long, value_name = "FILE")]
    pub save_model: Option<PathBuf>,
    /// Write the input's rows projected onto the components (pc1, pc2, …)
    /// to this CSV file; with --inverse, the rows mapped back to the columns.
    #[arg(long, value_name = "FILE")]
    pub transform_out: Option<PathBuf>,
    /// With --model: the input holds component values (pc1, pc2, …); map
    /// them back to the original columns (whitening undone).
    #[arg(long, requires_all = ["model", "transform_out"])]
    pub inverse: bool,
    /// Column naming each row in --transform-out (default: row numbers).
    #[arg(long, value_parser = column_name)]
    pub id_col: Option<String>,
}

fn component_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("pc{i}")).collect()
}

pub fn run(args: PcaArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let format = args.input.text.format(None);
    let backend = select(args.input.backend)?;
    let (model, columns, data) = match &args.model {
        Some(path) => {
            let (columns, model) = ModelFile::load(path)?.pca(path)?;
            // The model's own columns, by name: a reordered --columns would
            // project the wrong values.
            if !args.input.columns.is_empty() && args.input.columns != columns {
                anyhow::bail!(
                    "the model was fitted on the columns {}; --columns {} differs (leave it out to use the model's)",
                    columns.join(","),
                    args.input.columns.join(",")
                );
            }
            let wanted = if args.inverse {
                component_names(model.n_components())
            } else {
                columns.clone()
            };
            let data = read_table_limited(&args.input.input, &wanted, &format, ReadLimits::NONE)?;
            (model, columns, data)
        }
        None => {
            let data = read_table_limited(
                &args.input.input,
                &args.input.columns,
                &format,
                ReadLimits::NONE,
            )?;
            let params = PcaParams::new(args.n_components.unwrap_or(1)).whiten(args.whiten);
            let model = with_cpu_fallback(args.input.backend, backend.as_ref(), |b| {
                params.fit(b, data.values.view())
            })?;
            (model, data.columns.clone(), data)
        }
    };
    if let Some(path) = &args.save_model {
        TableModel::Pca {
            columns: columns.clone(),
            model: model.clone(),
        }
        .save(path)?;
    }
    if let Some(out) = &args.transform_out {
        let (values, names) = if args.inverse {
            (
                model.inverse_transform(data.values.view())?,
                columns.clone(),
            )
        } else {
            let y = with_cpu_fallback(args.input.backend, backend.as_ref(), |b| {
                model.transform(b, data.values.view())
            })?;
            (y, component_names(model.n_components()))
        };
        let ids = match &args.id_col {
            Some(col) => read_text_column(&args.input.input, col, &format)?,
            None => (1..=data.n_rows()).map(|i| i.to_string()).collect(),
        };
        write_rows(
            out,
            args.id_col.as_deref().unwrap_or("row"),
            &ids,
            &names,
            &values,
        )?;
        eprintln!("{} rows written to {}", ids.len(), out.display());
    }
    report(&args, &model, &columns, data.n_rows(), started)
}

fn write_rows(
    path: &std::path::Path,
    id_name: &str,
    ids: &[String],
    names: &[String],
    values: &Array2<f32>,
) -> anyhow::Result<()> {
    let file = super::private_file(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let mut w = csv::Writer::from_writer(file);
    let mut header = vec![id_name.to_owned()];
    header.extend(names.iter().cloned());
    w.write_record(&header)?;
    for (id, row) in ids.iter().zip(values.rows()) {
        let mut record = vec![id.clone()];
        record.extend(row.iter().map(|v| v.to_string()));
        w.write_record(&record)?;
    }
    w.flush()?;
    Ok(())
}

fn report(
    args: &PcaArgs,
    model: &PcaModel,
    columns: &[String],
    n_rows: usize,
    started: Instant,
) -> anyhow::Result<()> {
    let info = model.backend();
    if args.input.json {
        let out = json!({
            "backend": info.backend,
            "adapter": info.adapter,
            "n_components": model.n_components(),
            "n_rows": n_rows,
            "columns": columns,
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
        n_rows,
        columns.len(),
        info.backend,
        info.adapter
    );
    let mut header = vec!["component".into(), "variance".into(), "ratio".into()];
    header.extend(columns.iter().cloned());
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
