use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::output::{fmt_f, progress_bar, table};
use super::{column_name, InputArgs};
use segmenta::backend::{may_fall_back, select, with_cpu_fallback};
use segmenta::data::{read_table, read_table_limited, ReadLimits};
use segmenta::kmeans::{FitControl, Init, InitSample, KMeansParams};
use segmenta::model_file::TableModel;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InitArg {
    #[value(name = "k-means++")]
    KMeansPlusPlus,
    #[value(name = "k-means||")]
    KMeansParallel,
    #[value(name = "random")]
    Random,
}

/// `auto`, `all` or a positive number of rows.
pub fn parse_init_sample(s: &str) -> Result<InitSample, String> {
    match s {
        "auto" => Ok(InitSample::Auto),
        "all" => Ok(InitSample::All),
        n => match n.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "{n:?} is not `auto`, `all` or a positive number of rows"
            )),
            Ok(rows) => Ok(InitSample::Rows(rows)),
        },
    }
}

#[derive(Debug, Args)]
pub struct KmeansArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Number of clusters.
    #[arg(long)]
    pub k: usize,
    /// How the first centroids are chosen.
    #[arg(long, value_enum, default_value = "k-means++")]
    pub init: InitArg,
    /// Start from these centroids instead (CSV or Parquet, k rows, same columns).
    #[arg(long, conflicts_with = "init")]
    pub init_centroids: Option<PathBuf>,
    /// Rows k-means++ and k-means|| draw from: `auto` (a uniform sample of
    /// 1,024 rows per centre, at least 65,536, on unweighted data of more
    /// than twice that), `all`, or a number of rows (a sample when there
    /// are more than twice as many). `random` draws from every row.
    #[arg(long, default_value = "auto", value_parser = parse_init_sample, conflicts_with = "init_centroids")]
    pub init_sample: InitSample,
    /// Runs from different seeds; the lowest inertia wins.
    #[arg(long, default_value_t = 1)]
    pub n_init: usize,
    /// Most Lloyd iterations per run.
    #[arg(long, default_value_t = 300)]
    pub max_iter: usize,
    /// Convergence tolerance, relative to the mean feature variance.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1e-4)]
    pub tol: f64,
    /// Seed of the initialisation: same seed, same data, same model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scale every feature to unit variance first (stored with the model).
    #[arg(long)]
    pub standardize: bool,
    /// Column holding sample weights (not used as a feature; read whether or
    /// not `--columns` names it).
    #[arg(long, value_parser = column_name)]
    pub weights: Option<String>,
    /// Write each row's label and squared distance to this CSV file.
    #[arg(long)]
    pub labels_out: Option<PathBuf>,
    /// Save the model (centroids, scaling, columns) to this file, for
    /// `segmenta assign --model`.
    #[arg(long, value_name = "FILE")]
    pub save_model: Option<PathBuf>,
}

pub fn run(args: KmeansArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // The weights are read whether or not `--columns` names them.
    let mut wanted = args.input.columns.clone();
    if let Some(name) = args.weights.as_ref().filter(|_| !wanted.is_empty()) {
        if !wanted.contains(name) {
            wanted.push(name.clone());
        }
    }
    let data = read_table_limited(
        &args.input.input,
        &wanted,
        &args.input.text.format(None),
        ReadLimits::NONE,
    )?;
    let (x, weights, columns) = match &args.weights {
        None => (data.values, None, data.columns),
        Some(name) => split_weights(data, name)?,
    };
    let init = match &args.init_centroids {
        Some(path) => Init::Given(read_table(path, &columns)?.values),
        None => match args.init {
            InitArg::KMeansPlusPlus => Init::KMeansPlusPlus,
            InitArg::KMeansParallel => Init::KMeansParallel,
            InitArg::Random => Init::Random,
        },
    };
    let params = KMeansParams::new(args.k)
        .init(init)
        .init_sample(args.init_sample)
        .n_init(args.n_init)
        .max_iter(args.max_iter)
        .tol(args.tol)
        .seed(args.seed)
        .standardize(args.standardize);
    params.check()?;
    let backend = select(args.input.backend)?;
    let bar = progress_bar((args.max_iter * args.n_init) as u64, args.input.json);
    let progress_bar = bar.clone();
    let control = FitControl::default().on_progress(move |p| {
        progress_bar.set_position((p.run * p.max_iter + p.iteration) as u64);
        progress_bar.set_message(format!(
            "run {}/{} inertia {:.6e}",
            p.run + 1,
            p.n_init,
            p.inertia
        ));
    });
    let (n_rows, n_cols) = x.dim();
    let weights = weights.as_ref().map(|w| w.view());
    let model = if !may_fall_back(args.input.backend, backend.as_ref()) {
        // Run once, so the fit may scale the rows in place.
        params.fit_owned_with(backend.as_ref(), x, weights, &control)?
    } else {
        with_cpu_fallback(args.input.backend, backend.as_ref(), |b| {
            params.fit_with(b, x.view(), weights, &control)
        })?
    };
    bar.finish_and_clear();
    if let Some(path) = &args.labels_out {
        write_labels(path, model.labels(), model.distances())?;
    }
    if let Some(path) = &args.save_model {
        TableModel::Kmeans {
            columns: columns.clone(),
            model: model.clone(),
        }
        .save(path)?;
    }
    let info = model.backend();
    if args.input.json {
        let out = json!({
            "backend": info.backend,
            "adapter": info.adapter,
            "k": model.k(),
            "n_rows": n_rows,
            "columns": columns,
            "n_iter": model.n_iter(),
            "converged": model.converged(),
            "inertia": model.inertia(),
            "centroids": model.centroids().outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
            "cluster_sizes": model.cluster_sizes(),
            "inertia_history": model.inertia_history(),
            "standardized": args.standardize,
            "seed": args.seed,
            "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "k-means: k = {}, {} rows × {} columns, backend {} [{}]",
        model.k(),
        n_rows,
        n_cols,
        info.backend,
        info.adapter
    );
    println!(
        "{}; inertia {}; {:.2} s",
        if model.converged() {
            format!("converged after {} iterations", model.n_iter())
        } else {
            format!(
                "stopped at max_iter = {} before converging (raise --max-iter or --tol)",
                model.n_iter()
            )
        },
        fmt_f(model.inertia()),
        started.elapsed().as_secs_f64()
    );
    let mut header = vec!["cluster".to_string(), "size".to_string()];
    header.extend(columns.iter().cloned());
    let rows: Vec<Vec<String>> = model
        .centroids()
        .outer_iter()
        .enumerate()
        .map(|(c, centroid)| {
            let mut row = vec![c.to_string(), model.cluster_sizes()[c].to_string()];
            row.extend(centroid.iter().map(|&v| fmt_f(v as f64)));
            row
        })
        .collect();
    print!("{}", table(&header, &rows));
    Ok(())
}

type Split = (
    ndarray::Array2<f32>,
    Option<ndarray::Array1<f32>>,
    Vec<String>,
);

/// Takes the weights column out of the feature matrix.
fn split_weights(data: segmenta::data::Dataset, name: &str) -> anyhow::Result<Split> {
    let j = data.columns.iter().position(|c| c == name).ok_or_else(|| {
        segmenta::data::DataError::UnknownColumn {
            name: name.to_owned(),
            available: data.columns.join(", "),
            hint: String::new(),
        }
    })?;
    if data.n_cols() == 1 {
        anyhow::bail!("the weights column {name:?} is the only column: no features left");
    }
    let weights = data.values.column(j).to_owned();
    let keep: Vec<usize> = (0..data.n_cols()).filter(|&c| c != j).collect();
    let (x, columns) = data.into_columns_at(&keep);
    Ok((x, Some(weights), columns))
}

fn write_labels(path: &std::path::Path, labels: &[u32], distances: &[f32]) -> anyhow::Result<()> {
    let file = super::private_file(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let mut w = csv::Writer::from_writer(file);
    w.write_record(["row", "label", "distance"])?;
    for (i, (l, d)) in labels.iter().zip(distances).enumerate() {
        w.write_record([(i + 1).to_string(), l.to_string(), d.to_string()])?;
    }
    w.flush()?;
    Ok(())
}
